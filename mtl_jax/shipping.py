"""`mtl-jax export-model`: a training run's checkpoint as an exported model,
measured and described.

The steps, each in one place: `exported.export` writes the weights at the
stored precision with the checkpoint's record; `evaluation.evaluate_workdir`
measures the exported weights on validation, and the float32 checkpoint
beside it, so the card says what the smaller weights cost (`float16` is kept
only where that is nothing measurable); `model_card.write` writes the card.
"""

from __future__ import annotations

import logging
import os

from mtl_jax import evaluation, exported, jsonio, model_card
from mtl_jax import runtime as runtime_lib

# Figures compared between the float32 checkpoint and the stored weights.
COMPARED = ('dice', 'auc_covid', 'accuracy', 'recon_mse')


def export_model(workdir: str, dest: str, which: str = 'best', dtype: str = 'float16',
                 overrides=()) -> dict:
  """Export, evaluate both, write the card; returns {'path', 'size_mb',
  'validation', 'float32_validation', 'differences'}."""
  overrides = list(overrides)
  loaded = runtime_lib.load(workdir, which, overrides)
  dest = exported.export(loaded, dest, dtype)
  stored = evaluation.evaluate_workdir(dest, 'validation', overrides=overrides)
  full = evaluation.evaluate_workdir(workdir, 'validation', which=loaded.which,
                                     overrides=overrides)
  differences = {k: (None if stored.get(k) is None or full.get(k) is None
                     else float(stored[k]) - float(full[k])) for k in COMPARED}
  meta = exported.read_meta(dest)
  meta['export']['float32_differences'] = differences
  jsonio.write_json(os.path.join(dest, exported.META_FILE), meta, sort_keys=True)
  size = exported.size_mb(dest)
  with open(os.path.join(dest, exported.CARD_FILE), 'w', encoding='utf-8') as f:
    f.write(model_card.write(meta, stored, size))
  logging.info('exported %s (%s step %d) to %s: %.1f MB, %s minus float32: %s', workdir,
               loaded.which, loaded.step, dest, size, dtype, differences)
  return {'path': dest, 'size_mb': size, 'validation': stored,
          'float32_validation': full, 'differences': differences}
