"""MedSeg validation Dice at the masks' own resolution, through `mtl-jax predict`.

Run by hand (results go in docs/log/YYYY-MM.md, summary in docs/results.md):
  .venv/bin/python bench/native_dice.py runs/quality/together/seed_0 [RUN ...] \
      [--checkpoint latest] [--medseg ../shared/data/medseg_covid]

`mtl-jax evaluate` scores Dice on the built split, i.e. against masks
downsized to the run's `data.image_size` (128 px for real.py:cpu), where a
lesion a few pixels wide at 512 px is one pixel or none. The withheld test
half is scored on `mtl-jax predict`'s masks, which the predictor pastes back
to the input's own size. This script does what that scorer does on the
validation slices: it reads the held-out slice names from the run's own
built split (so a cross-validation fold is scored on its own fold), runs
the predictor on the original image files, and pools Dice over every pixel
of the original masks (any lesion class counts), with a bootstrap 95% CI
over slices. So runs trained or evaluated at different sizes are compared
at one resolution, the one users are scored at.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtl_jax import evaluation, metrics, metrics_summary, predict, volume_io  # noqa: E402
from mtl_jax.data import datasets  # noqa: E402

SOURCE = 'medseg_covid'
SLICE_PREFIX = 'slice_'  # the builder's patient id of a slice folder's image


def held_out_slices(config, split: str = 'validation') -> list[str]:
  """File stems of the MedSeg slices in the run's built `split`."""
  source = datasets.load_split(SOURCE, split, config.data.data_dir,
                               int(config.data.image_size))
  ids = sorted(str(source[i]['patient_id']) for i in range(len(source)))
  if not ids or not all(i.startswith(SLICE_PREFIX) for i in ids):
    raise SystemExit(f'{source.path}: expected slice-folder ids ({SLICE_PREFIX}NAME), '
                     f'got {ids[:3]}; this script reads the slice-folder release')
  return [i[len(SLICE_PREFIX):] for i in ids]


def slice_counts(predictor: predict.Predictor, medseg: pathlib.Path,
                 stems: list[str]) -> np.ndarray:
  """(TP, FP, FN, TN) per slice of the predictor's mask against the original mask."""
  folder = medseg / 'train' if (medseg / 'train' / 'images').is_dir() else medseg
  masks = folder / 'masks_multiclass'
  masks = masks if masks.is_dir() else folder / 'masks'
  counts = []
  with tempfile.TemporaryDirectory() as tmp:
    for stem in stems:
      image = next(folder.glob(f'images/{stem}.*'), None)
      if image is None:
        raise SystemExit(f'{folder / "images"}: no image {stem}.* (held out by the run\'s '
                         'build); is --medseg the folder the run was built from?')
      study = volume_io.read_study(image)
      out = pathlib.Path(tmp) / stem
      report = predictor.predict_study(study, out)
      predicted = volume_io.read_mask_like(study, out / report['outputs']['lesion_mask'])
      reference = volume_io.read_mask_like(study, masks / f'{stem}.png')
      counts.append(metrics.binary_counts(predicted > 0, reference > 0))
  return np.asarray(counts, np.int64)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+', help='run folders with checkpoints')
  parser.add_argument('--checkpoint', default='latest', choices=('best', 'latest'))
  parser.add_argument('--medseg', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'data',
      SOURCE))
  args = parser.parse_args()

  print('| run | step | built size | slices | Dice at built size (evaluate) | '
        'Dice at mask size (predict) [95% CI] | mean per-slice Dice |')
  print('|---|---|---|---|---|---|---|')
  for workdir in args.workdirs:
    predictor = predict.Predictor(workdir, which=args.checkpoint)
    config = predictor.runtime.config
    stems = held_out_slices(config)
    c = slice_counts(predictor, pathlib.Path(args.medseg), stems)
    pooled = metrics.dice_from_counts(*c[:, :3].sum(axis=0))
    low, high = metrics_summary.bootstrap_pooled_dice_ci(c, num_resamples=metrics_summary.NUM_RESAMPLES, seed=0)
    per_slice = np.mean([metrics.dice_from_counts(*row[:3]) for row in c])
    built = evaluation.results_path(workdir, 'validation', predictor.which)
    if os.path.exists(built):
      with open(built, encoding='utf-8') as f:
        seg = json.load(f).get('by_source', {}).get(SOURCE, {})
      at_built = f'{seg.get("dice", float("nan")):.3f}'
    else:
      at_built = f'(no {os.path.basename(built)})'
    print(f'| {workdir} | {predictor.step} | {int(config.data.image_size)} | {len(stems)} | '
          f'{at_built} | {pooled:.3f} [{low:.3f}, {high:.3f}] | {per_slice:.3f} |')


if __name__ == '__main__':
  main()
