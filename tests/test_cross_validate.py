"""bench/cross_validate.py: folds kept without checkpoints count as finished."""

import json
import subprocess
import sys

from conftest import REPO

SCRIPT = [sys.executable, str(REPO / 'bench' / 'cross_validate.py'),
          '--config', 'configs/default.py:tiny', '--checkpoint', 'latest']


def _keep_fold(kept, root, fold, **config_changes):
  """A fold's kept results as --keep_results writes them: config and evaluation."""
  from mtl_jax import jsonio  # pylint: disable=g-import-not-at-top
  from mtl_jax.config import loader  # pylint: disable=g-import-not-at-top
  data = root / f'data_fold_{fold}'
  config = loader.load_config(str(REPO / 'configs' / 'default.py:tiny'),
                                     [f'--config.data.data_dir={data}'])
  config.update_from_flattened_dict(config_changes)
  folder = kept / f'fold_{fold}'
  folder.mkdir(parents=True)
  jsonio.write_json(folder / 'config.json', config.to_dict())
  from mtl_jax import lesion_threshold  # pylint: disable=g-import-not-at-top
  grid = lesion_threshold.GRID  # fold 1's Dice peaks at threshold 0.3, fold 2's at 0.7
  peak = {1: 0.3, 2: 0.7}.get(fold, 0.5)
  counts = [[100, round(10 + 100 * abs(t - peak)), round(10 + 100 * abs(t - peak))] for t in grid]
  medseg = {'dice': 0.7 + fold / 100, 'dice_ci95': [0.6, 0.8], 'num_seg_examples': 10,
            'dice_per_image_mean': 0.65,
            'threshold_sweep': {'thresholds': list(grid), 'num_seg_examples': 10,
                                'counts': counts, 'num_normal_slices': 0,
                                'normal_lesion_area': None}}  # MedSeg has no normal slices
  pooled_sweep = {'thresholds': list(grid), 'num_normal_slices': 5,  # normal area: pooled
                  'normal_lesion_area': [round(0.01 * (1 - t), 4) for t in grid]}
  jsonio.write_json(folder / 'eval_validation_latest.json',
                    {'step': config.train.num_train_steps, 'threshold_sweep': pooled_sweep,
                     'by_source': {'medseg_covid': medseg}})


def test_folds_kept_in_another_session_are_taken_not_trained(tmp_path):
  root, kept = tmp_path / 'cv', tmp_path / 'kept'
  _keep_fold(kept, root, 1)
  _keep_fold(kept, root, 2)
  _keep_fold(kept, root, 3, seed=7)  # another recipe: trained again, not taken
  plan = subprocess.run(SCRIPT + ['--root', str(root), '--folds', '1,3', '--keep_results',
                                  str(kept), '--dry_run'], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert plan.returncode == 0, plan.stderr
  assert f'fold 1: kept in {kept}/fold_1' in plan.stdout
  assert '--fold 3' in plan.stdout and 'fold 3: kept' not in plan.stdout
  done = subprocess.run(SCRIPT + ['--root', str(root), '--folds', '1,2', '--keep_results',
                                  str(kept)], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  assert '| 1 | 10 | 0.710 [0.600, 0.800] | 0.650 |' in done.stdout
  assert '| mean ± sd | | 0.715 ± 0.007 | |' in done.stdout
  # Each fold is scored at the threshold that is best on the other one.
  assert '| 1 | 0.7 | 0.667 | 0.769 | 3.00e-03 / 5.00e-03 |' in done.stdout
  assert '| 2 | 0.3 | 0.667 | 0.769 | 7.00e-03 / 5.00e-03 |' in done.stdout
  assert 'would adopt: 0.5' in done.stdout  # symmetric peaks: the tie goes to the default
  assert (root / 'fold_2').resolve() == (kept / 'fold_2').resolve()
  assert json.loads((kept / 'fold_2' / 'eval_validation_latest.json').read_text())['step'] > 0
