"""XLA compiler options that make this model's *training* faster on the CPU.

Measured, not guessed (bench/profile_step.py, bench/RESULTS.md): jax 0.12
sends every convolution to YNNPACK, which runs the forward pass well but the
*weight gradient* of a 3x3 convolution (a convolution whose feature dimension
is the batch) at a quarter of its forward speed; those ops and the transposes
feeding them were ~49% of the paper-size train step. XLA's Eigen convolution
runs the weight gradient about twice as fast, and its forward pass a little
slower. So the jitted train step keeps convolutions on Eigen (dots stay on
YNNPACK, XLA's fastest matmul here), while evaluation and prediction keep
XLA's default, YNNPACK convolutions.

Options are per jitted function (`jax.jit(..., compiler_options=...)`), so
nothing global changes. They apply on the CPU backend only, not when the user
sets the same flag in XLA_FLAGS, and not with MTL_XLA_CPU_DEFAULTS=0.
"""

from __future__ import annotations

import os

import jax

YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
# YNNPACK for dots only: convolutions go to XLA's Eigen kernels.
TRAIN_OPTIONS = {YNN_FLAG: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def train_compiler_options(environ=os.environ, backend: str | None = None) -> dict:
  """`compiler_options` for the jitted train step ({} where they do not apply)."""
  if environ.get('MTL_XLA_CPU_DEFAULTS', '1') == '0':
    return {}
  if YNN_FLAG in environ.get('XLA_FLAGS', ''):
    return {}  # the user chose
  if (backend or jax.default_backend()) != 'cpu':
    return {}
  return dict(TRAIN_OPTIONS)
