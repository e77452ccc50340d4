"""XLA flags that make this model's training faster on the CPU backend.

Measured, not guessed (bench/profile_step.py, bench/RESULTS.md): jax 0.12
sends every convolution to YNNPACK, which runs the forward pass well but the
*weight gradient* of a 3x3 convolution (a convolution whose feature dimension
is the batch) at a quarter of its forward speed; those ops were ~49% of the
paper-size train step. XLA's Eigen convolution runs the weight gradient about
twice as fast. Dots stay on YNNPACK, which is XLA's fastest matmul here.

The flags only concern XLA's CPU backend (GPU and TPU ignore them), are added
to XLA_FLAGS only where the user has not set the same flag, and can be turned
off with MTL_XLA_CPU_DEFAULTS=0. XLA reads XLA_FLAGS when JAX first creates a
backend, so `apply()` runs at `import mtl_jax`.
"""

from __future__ import annotations

import os

FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)


def apply(environ=os.environ) -> list[str]:
  """Add FLAGS to XLA_FLAGS (not overriding the user's); returns those added."""
  if environ.get('MTL_XLA_CPU_DEFAULTS', '1') == '0':
    return []
  current = environ.get('XLA_FLAGS', '')
  names = {item.split('=')[0] for item in current.split()}
  added = [flag for flag in FLAGS if flag.split('=')[0] not in names]
  if added:
    environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  return added
