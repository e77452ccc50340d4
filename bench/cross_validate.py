"""5-fold cross-validated MedSeg Dice for a recipe (the 10-slice fold moves by ±0.08).

  python bench/cross_validate.py --root runs/cv --config configs/real.py:cpu \\
      [--folds 0,1,2,3,4] [--set KEY=VALUE ...] [--checkpoint latest|best] [--dry_run]
      [--reuse_fold0 RUN] [--keep_results DIR]

Fold k holds out the k-th 10 of MedSeg's 50 slices (`build-data medseg_covid
--fold k`, a rotation of the seeded permutation: the five folds cover every
slice once; MedSeg is read from $MTL_MANUAL_DIR/medseg_covid). Each fold gets
ROOT/data_fold_k (MedSeg built with that fold;
the other sources linked from --data_dir) and ROOT/fold_k (the run, then
`mtl-jax evaluate`). Re-entrant: finished folds are skipped, unfinished ones
resume. Prints each fold's Dice with its bootstrap CI, and the mean ± sd
over folds. Each fold is scored at its last step by default: its `best`
checkpoint is chosen on the very slices it holds out, which biases the
cross-validated figure upwards.

Then the lesion threshold, honestly: each fold's Dice at the threshold that
scores best on the *other* folds (from the `threshold_sweep` every
evaluation records, `mtl_jax/lesion_threshold.py`), against its Dice at the
default 0.5, with the lesion area on normal slices at both; a lower
threshold is only worth adopting if this nested figure beats the default.

Fold 0 is the split every other run trains on (`build-data` without
--fold): `--reuse_fold0 RUN` takes a finished run of the same recipe (seed
0) as fold 0 instead of training it again, after checking that its whole
config matches what fold 0 would train (but for the data folder) and that
its MedSeg data holds out fold 0 (same split seed).

`--keep_results DIR` copies each fold's results (config, evaluation,
validation history; no checkpoints) to DIR/fold_K as soon as it is
finished, and a later call takes a fold finished there (same recipe) instead
of training it: with `--checkpoint latest` the evaluation of the last step is
all a fold's figure needs, so folds spread over sessions whose ROOT is wiped
are not lost (this project keeps its own in bench/plans/cv).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtl_jax import (ablation, checkpointing, evaluation,  # noqa: E402
                     lesion_threshold, plan_results)
from mtl_jax.config import loader  # noqa: E402
from mtl_jax.data import datasets  # noqa: E402

FOLDED = 'medseg_covid'  # the source whose validation fold rotates


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', default='runs/cv')
  parser.add_argument('--config', default='configs/real.py:cpu')
  parser.add_argument('--data_dir', default='data')
  parser.add_argument('--image_size', type=int, default=None,
                      help="MedSeg's build size (default: the recipe's data.image_size)")
  parser.add_argument('--folds', default='0,1,2,3,4')
  parser.add_argument('--set', action='append', default=[], help='KEY=VALUE for every fold')
  parser.add_argument('--mtl_jax', default=os.path.join(os.path.dirname(sys.executable),
                                                        'mtl-jax'))
  parser.add_argument('--checkpoint', default='latest', choices=('latest', 'best'))
  parser.add_argument('--dry_run', action='store_true')
  parser.add_argument('--reuse_fold0', default='',
                      help='a finished run of this recipe (seed 0) to use as fold 0')
  parser.add_argument('--keep_results', default='', metavar='DIR',
                      help='copy each finished fold\'s config, evaluation and validation '
                      'history (no checkpoints) to DIR/fold_K, and take a fold finished there '
                      'instead of training it again')
  args = parser.parse_args(argv)
  if any(s.startswith('data.data_dir=') for s in args.set):
    parser.error('each fold has its own data folder: give the sources with --data_dir, '
                 'not --set data.data_dir')
  exe = shlex.split(args.mtl_jax)
  recipe = loader.load_config(args.config, [f'--config.{s}' for s in args.set])
  size = args.image_size or recipe.data.image_size
  others = sorted((set(recipe.data.sources) | set(recipe.data.eval_sources)) - {FOLDED})
  folds = [int(f) for f in args.folds.split(',')]
  if args.reuse_fold0 and 0 not in folds:
    parser.error('--reuse_fold0 without fold 0 in --folds')
  results = {}
  for fold in folds:
    data = os.path.abspath(os.path.join(args.root, f'data_fold_{fold}'))
    workdir = os.path.join(args.root, f'fold_{fold}')
    evaluated = evaluation.results_path(workdir, 'validation', args.checkpoint)
    steps = [exe + ['build-data', FOLDED, '--data_dir', data, '--image_size',
                    str(size), '--fold', str(fold)],
             exe + ['train', '--config', args.config, '--workdir', workdir,
                    f'--config.data.data_dir={data}'] + [f'--config.{s}' for s in args.set],
             exe + ['evaluate', '--workdir', workdir, '--checkpoint', args.checkpoint]]
    kept = os.path.join(args.keep_results, f'fold_{fold}') if args.keep_results else ''
    reuse_kept = (kept and not os.path.lexists(workdir) and _finished(args, kept)
                  and not _differences(args, data, kept))
    reuse_run = fold == 0 and args.reuse_fold0 and not reuse_kept
    if reuse_run:
      problem = _not_fold0(args, data, workdir)
      if problem:
        print(f'--reuse_fold0 {args.reuse_fold0}: {problem}', file=sys.stderr)
        return 2
      steps = steps[-1:]  # a finished run: at most its evaluation is missing
    if args.dry_run:
      print(f'fold {fold}: kept in {kept}' if reuse_kept
            else '\n'.join(shlex.join(c) for c in steps))
      continue
    if reuse_kept or (reuse_run and not os.path.lexists(workdir)):
      os.makedirs(args.root, exist_ok=True)
      source = kept if reuse_kept else args.reuse_fold0
      os.symlink(os.path.abspath(source), workdir)
      print(f'fold {fold}: {workdir} -> {source}')
    if reuse_run:
      if not os.path.exists(evaluated) and subprocess.run(steps[0]).returncode:
        print(f'fold 0: failed: {shlex.join(steps[0])}', file=sys.stderr)
        return 1
    elif not _finished(args, workdir):
      os.makedirs(data, exist_ok=True)
      for name in others:  # the other sources do not depend on the fold
        link = os.path.join(data, name)
        if not os.path.lexists(link):
          os.symlink(os.path.abspath(os.path.join(args.data_dir, name)), link)
      for cmd in steps:
        if subprocess.run(cmd).returncode:
          print(f'fold {fold}: failed: {shlex.join(cmd)}', file=sys.stderr)
          return 1
    if kept:  # as soon as it is finished: the session may not live to the last fold
      plan_results.copy_results(workdir, kept, evaluated)
    with open(evaluated) as f:
      results[fold] = json.load(f)
  if results:
    print(table(results))
  return 0


def _differences(args, data: str, run: str) -> list[str]:
  """Fields where RUN's config differs from the recipe's fold with data
  folder DATA (the folder itself does not count)."""
  with open(os.path.join(run, 'config.json')) as f:
    saved = json.load(f)
  expected = loader.load_config(
      args.config, [f'--config.data.data_dir={data}'] + [f'--config.{s}' for s in args.set])
  ignored = ('data.data_dir',) + (('train.best_metric',) if args.checkpoint == 'latest' else ())
  return loader.differences(saved, expected.to_dict(), ignored)


def _not_fold0(args, data: str, workdir: str) -> str:
  """Why `args.reuse_fold0` cannot be fold 0 ('' if it can): fold 0's folder
  holds another run, or the run is unfinished, trained another recipe (whole
  config but the data folder), or on other data (MedSeg not holding out fold
  0 of split seed 0, or another build of the other sources)."""
  run = args.reuse_fold0
  if os.path.lexists(workdir) and os.path.realpath(workdir) != os.path.realpath(run):
    return f'{workdir} already holds another run'
  if not os.path.exists(os.path.join(run, 'config.json')):
    return 'no config.json: not a run folder'
  with open(os.path.join(run, 'config.json')) as f:
    saved = json.load(f)
  differ = _differences(args, data, run)
  if differ:
    return f'trained another recipe ({", ".join(differ)} differ)'
  total = saved['train']['num_train_steps']
  if checkpointing.select_step(run, 'latest') != total:
    return f'unfinished (fold 0 must be a run trained to its {total} steps)'
  size = saved['data']['image_size']
  run_data = saved['data']['data_dir']
  if not os.path.isabs(run_data):  # relative to where it was trained: the repository
    run_data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            run_data)
  path = datasets.builder_dir(FOLDED, run_data, size)
  if path is None:
    return f'its MedSeg data ({run_data}) is gone; cannot check its fold'
  with open(os.path.join(path, 'metadata.json')) as f:
    built = json.load(f)
  if (built.get('fold', 0), built.get('seed')) != (0, 0):
    return (f'its MedSeg data holds out fold {built.get("fold", 0)} of split seed '
            f'{built.get("seed")}, not fold 0 of seed 0')
  trained_on = (checkpointing.read_meta(run, 'latest')[0].get('preprocessing') or {}).get(
      'built') or {}
  for name in sorted(set(trained_on) - {FOLDED}):
    here = datasets.builder_dir(name, args.data_dir, size)
    if here is None or datasets.built_record(here) != trained_on[name]:
      return f'trained on another build of {name} than {args.data_dir} holds'
  return ''


def _finished(args, workdir) -> bool:
  """Trained to its last step and evaluated at --checkpoint; with `latest`,
  that evaluation alone (a fold kept without its checkpoints) is enough."""
  evaluated = evaluation.results_path(workdir, 'validation', args.checkpoint)
  if not os.path.exists(evaluated):
    return False
  with open(os.path.join(workdir, 'config.json')) as f:
    total = json.load(f)['train']['num_train_steps']
  return (ablation.evaluated_last_step({'split': 'validation', 'checkpoint': args.checkpoint},
                                       workdir, total)
          or checkpointing.select_step(workdir, 'latest') == total)


def table(results: dict) -> str:
  lines = ['| fold | held-out slices | Dice (pooled) [95% CI] | Dice (mean per slice) |',
           '|---|---|---|---|']
  dice = []
  for fold, r in sorted(results.items()):
    medseg = (r.get('by_source') or {}).get(FOLDED, r)
    dice.append(medseg['dice'])
    ci = medseg.get('dice_ci95') or [float('nan')] * 2
    lines.append(f'| {fold} | {medseg["num_seg_examples"]} | {medseg["dice"]:.3f} '
                 f'[{ci[0]:.3f}, {ci[1]:.3f}] | {medseg["dice_per_image_mean"]:.3f} |')
  sd = np.std(dice, ddof=1) if len(dice) > 1 else 0.0
  lines.append(f'| mean ± sd | | {np.mean(dice):.3f} ± {sd:.3f} | |')
  return '\n'.join(lines + ['', threshold_table(results)])


def threshold_table(results: dict) -> str:
  """Each fold's Dice at a lesion threshold chosen on the other folds
  (lesion_threshold.nested_choice), next to its Dice at the default; the
  lesion area on normal slices (MosMed CT-0, China: the pooled sweep, MedSeg
  has none) at both."""
  grid = list(lesion_threshold.GRID)
  sweeps, skipped = {}, []
  for fold, r in sorted(results.items()):
    medseg = ((r.get('by_source') or {}).get(FOLDED, r)).get('threshold_sweep')
    if medseg and medseg.get('num_seg_examples') and medseg['thresholds'] == grid:
      sweeps[fold] = (medseg, r.get('threshold_sweep') or {})
    else:
      skipped.append(fold)
  note = (f'Folds {skipped} have no threshold sweep on this grid (evaluated before it '
          'existed): evaluate their run again with `mtl-jax evaluate --checkpoint latest` '
          'and copy its evaluation JSON over the kept one, or train the fold again.'
          if skipped else '')
  if len(sweeps) < 2:
    return 'Lesion threshold chosen across folds: needs at least 2 folds. ' + note
  out = lesion_threshold.nested_choice({f: m['counts'] for f, (m, _) in sweeps.items()})
  default = out['default']
  lines = [f'| fold | threshold chosen on the other folds | Dice there | Dice at {default} | '
           f'normal lesion area there / at {default} |', '|---|---|---|---|---|']
  for fold, row in sorted(out['folds'].items()):
    area = sweeps[fold][1].get('normal_lesion_area')
    area_text = (f'{area[grid.index(row["threshold"])]:.2e} / {area[grid.index(default)]:.2e}'
                 if area else 'n/a')
    lines.append(f'| {fold} | {row["threshold"]} | {row["dice"]:.3f} | '
                 f'{row["dice_at_default"]:.3f} | {area_text} |')
  lines.append(f'| pooled | | {out["pooled_dice_nested"]:.3f} | '
               f'{out["pooled_dice_at_default"]:.3f} | |')
  lines.append(f'\nThreshold the whole cross-validation would adopt: '
               f'{out["adopted_threshold"]} (by pooled Dice over folds {sorted(sweeps)}).')
  return '\n'.join(lines + ([note] if note else []))

if __name__ == '__main__':
  sys.exit(main())
