"""Issue 14: the ablation plan runs end to end, re-enters after a kill, and tables what exists."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

SWEEP = [sys.executable, str(REPO / 'launch' / 'sweep.py'), '--plan',
         'configs/ablation.py:tiny']


def _sweep(root, data_dir, *extra, wait=True):
  cmd = SWEEP + ['--root', str(root), '--set', f'data.data_dir={data_dir}',
                 '--mtl_jax', f'{sys.executable} -m mtl_jax', *extra]
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_plan_runs_reenters_after_a_kill_and_collects(tmp_path, synthetic_data_dir):
  root = tmp_path / 'ablation'
  first = root / 'full' / 'seed_0' / 'eval_validation_latest.json'  # plan.checkpoint
  sweep = _sweep(root, synthetic_data_dir, wait=False)
  deadline = time.time() + 600
  while not first.exists() and sweep.poll() is None and time.time() < deadline:
    time.sleep(0.5)
  assert first.exists(), sweep.communicate()[0][-3000:]
  os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and the run it is in
  sweep.wait()
  done_at = first.stat().st_mtime

  # A half-done sweep: --collect tables what exists and names what is missing.
  half = _sweep(root, synthetic_data_dir, '--collect')
  assert half.returncode == 0, half.stderr
  assert 'Missing:' in half.stdout and 'seg_only/seed_1' in half.stdout

  kept = tmp_path / 'kept'
  again = _sweep(root, synthetic_data_dir, '--keep_results', str(kept))
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert 'full/seed_0: done, skipped' in again.stdout
  assert first.stat().st_mtime == done_at  # the finished run was not redone
  assert json.loads(first.read_text())['step'] == 2  # the last step, not the best
  assert 'Missing' not in again.stdout

  table = (root / 'results.md').read_text()
  assert '| full | 2 |' in table and '| seg_only | 2 |' in table
  assert '| seg_only | Dice (pooled) |' in table  # paired against the baseline, seed by seed
  with open(root / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted((r['arm'], r['seed']) for r in rows) == [
      ('full', '0'), ('full', '1'), ('seg_only', '0'), ('seg_only', '1')]
  assert all(0 <= float(r['dice']) <= 1 for r in rows)
  # Classification is scored where the arm has it, and left blank where it has not.
  assert all(0 <= float(r['auc_covid']) <= 1 for r in rows if r['arm'] == 'full')
  assert all(r['auc_covid'] == '' for r in rows if r['arm'] == 'seg_only')
  assert (root / 'results.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert (root / 'results_diff.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert json.loads((root / 'plan.json').read_text())['name'] == 'ablation:tiny'

  # The results kept without checkpoints (a purged scratch root) are still
  # the plan's finished runs: tabled from there, and linked by a later sweep.
  assert (kept / 'seg_only' / 'seed_1' / 'eval_validation_latest.json').exists()
  keeping = _sweep(root, synthetic_data_dir, '--collect', '--keep_results', str(kept))
  assert keeping.returncode == 0 and 'results of 4 runs kept' in keeping.stdout, keeping.stderr
  assert sorted(os.listdir(kept / 'full' / 'seed_0')) == [
      'config.json', 'eval_validation_latest.json', 'validation_history.jsonl']
  from_kept = _sweep(kept, synthetic_data_dir, '--collect')
  assert from_kept.returncode == 0 and 'Missing' not in from_kept.stdout, from_kept.stderr
  assert (kept / 'results.md').read_text() == table.replace(str(root), str(kept))
  relinked = _sweep(tmp_path / 'later', synthetic_data_dir, '--reuse_from', str(kept))
  assert relinked.returncode == 0, relinked.stdout[-3000:] + relinked.stderr[-3000:]
  assert relinked.stdout.count(': linked') == 4 and 'Missing' not in relinked.stdout

  # Another plan's run under the same root: refused, naming the folder.
  stray = root / 'cls_only' / 'seed_0'
  stray.mkdir(parents=True)
  (stray / 'config.json').write_text('{}')
  mixed = _sweep(root, synthetic_data_dir, '--collect')
  assert mixed.returncode == 2
  assert 'cls_only/seed_0 (not an arm of ablation:tiny)' in mixed.stderr

  # Another root links the identical finished runs instead of training them.
  other = tmp_path / 'again'
  linked = _sweep(other, synthetic_data_dir, '--reuse_from', str(root))
  assert linked.returncode == 0, linked.stdout[-3000:] + linked.stderr[-3000:]
  assert linked.stdout.count(': linked') == 4 and 'Missing' not in linked.stdout
  assert os.path.realpath(other / 'full' / 'seed_1') == str((root / 'full' / 'seed_1').resolve())


def test_unknown_arms_and_seeds_are_one_line_errors(tmp_path):
  for flag, value, message in (('--arms', 'full,nope', 'valid arms of ablation:tiny: full, '
                                'seg_only'),
                               ('--seeds', '0,9', 'valid seeds of ablation:tiny: 0,1'),
                               ('--baseline', 'nope', 'valid arms of ablation:tiny: full, '
                                'seg_only')):
    result = subprocess.run(SWEEP + ['--root', str(tmp_path), flag, value, '--dry_run'],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_another_baseline_is_what_every_arm_is_paired_with():
  from mtl_jax import ablation, plan_results  # pylint: disable=g-import-not-at-top
  plan = ablation.load_plan(str(REPO / 'configs' / 'ablation.py:tiny'), baseline='seg_only')
  rows = [{'arm': arm, 'seed': seed, 'dice': dice}
          for arm, seed, dice in (('full', 0, 0.70), ('full', 1, 0.72),
                                  ('seg_only', 0, 0.60), ('seg_only', 1, 0.61))]
  table = plan_results.paired_table(plan, rows)
  assert 'mean difference (arm - seg_only)' in table
  assert '| full | Dice (pooled) | +0.105 | 0.00707 | 2 |' in table
  assert '| seg_only |' not in table


def test_tables_keep_small_figures_and_name_what_was_not_tested():
  """Three significant digits (an MSE's seed spread is not 0.000), a missing
  task is '-', a constant difference is not tested, and p is Holm-adjusted
  over the arms compared on a metric."""
  from mtl_jax import ablation, plan_results  # pylint: disable=g-import-not-at-top
  plan = ablation.load_plan(str(REPO / 'configs' / 'ablation.py:tiny'))
  plan['arms'] = {**plan['arms'], 'cls_only': 'tiny,cls_only'}
  rows = [{'arm': 'full', 'seed': 0, 'dice': 0.70, 'recon_mse': 0.0105, 'accuracy': 0.90},
          {'arm': 'full', 'seed': 1, 'dice': 0.72, 'recon_mse': 0.0108, 'accuracy': 0.91},
          {'arm': 'full', 'seed': 2, 'dice': 0.71, 'recon_mse': 0.0104, 'accuracy': 0.92},
          {'arm': 'seg_only', 'seed': 0, 'dice': 0.60, 'recon_mse': 0.0115},
          {'arm': 'seg_only', 'seed': 1, 'dice': 0.63, 'recon_mse': 0.0118},
          {'arm': 'seg_only', 'seed': 2, 'dice': 0.61, 'recon_mse': 0.0114},
          {'arm': 'cls_only', 'seed': 0, 'accuracy': 0.95, 'recon_mse': 0.0101},
          {'arm': 'cls_only', 'seed': 1, 'accuracy': 0.96, 'recon_mse': 0.0103}]
  summary = plan_results.summary_table(plan, rows)
  assert '| full | 3 | 0.710 ± 0.0100 | 0.910 ± 0.0100 | 0.0106 ± 0.000208 |' in summary
  assert '| cls_only | 2 | - |' in summary  # no segmentation: missing, not 0
  assert '| full | 1 | 0.700 | 0.900 | 0.0105 |' in plan_results.summary_table(plan, rows[:1])
  assert 'not a CI of the mean over seeds' in summary
  paired = plan_results.paired_table(plan, rows)
  # recon MSE +0.001 in every seed of seg_only: no spread, so no t-test
  assert '| seg_only | recon MSE | +0.00100 | 0 | 3 | - | - (the same difference' in paired
  assert '| cls_only | accuracy (pooled) | +0.0500 | 0 | 2 | - |' in paired
  line = next(l for l in paired.splitlines() if l.startswith('| seg_only | Dice'))
  raw, adjusted = (float(c) for c in line.strip('| ').split(' | ')[-2:])
  assert adjusted == pytest.approx(raw)  # the only arm with a Dice: a family of one
  assert plan_results.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])

  # The difference chart plots exactly what the paired table tests.
  diffs = {(arm, key): d for arm, key, d in plan_results.paired_differences(plan, rows)}
  assert diffs[('seg_only', 'dice')] == pytest.approx([-0.10, -0.09, -0.10])
  assert diffs[('cls_only', 'accuracy')] == pytest.approx([0.05, 0.05])  # seeds both have
  assert ('cls_only', 'dice') not in diffs


def test_difference_chart_is_written_once_an_arm_has_a_pair(tmp_path):
  from mtl_jax import ablation, plan_results  # pylint: disable=g-import-not-at-top
  plan = ablation.load_plan(str(REPO / 'configs' / 'ablation.py:tiny'))
  rows = [{'arm': 'full', 'seed': 0, 'dice': 0.70}, {'arm': 'seg_only', 'seed': 1, 'dice': 0.6}]
  path = tmp_path / 'diff.png'
  assert not plan_results.difference_chart(plan, rows, str(path)) and not path.exists()
  rows.append({'arm': 'seg_only', 'seed': 0, 'dice': 0.65})
  assert plan_results.difference_chart(plan, rows, str(path))
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert os.listdir(tmp_path) == ['diff.png']  # written atomically: no temporary left


def test_dry_run_prints_a_slurm_array_and_a_tpu_loop(tmp_path):
  result = subprocess.run(SWEEP + ['--root', str(tmp_path), '--dry_run'], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert '#SBATCH --array=0-3' in result.stdout
  assert result.stdout.count('gcloud compute tpus tpu-vm ssh') == 4
  assert '--config.seed=1' in result.stdout


def test_an_arm_with_its_own_overrides_is_run_recorded_and_checked_with_them(tmp_path):
  """configs/quality.py: an arm is a preset plus its own overrides (the
  recipe's ingredients it switches off); they reach its commands, the root's
  record and the check that refuses runs made with other settings."""
  from mtl_jax import ablation  # pylint: disable=g-import-not-at-top
  from mtl_jax.config import loader  # pylint: disable=g-import-not-at-top
  from mtl_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  plan = ablation.load_plan(str(REPO / 'configs' / 'quality.py'))
  root = str(tmp_path / 'quality')
  base, pseudo, pretrain, pretrained, *_ = [r for r in ablation.runs(plan, root)
                                            if r.seed == 0]
  assert (pretrain.arm, pretrained.arm) == ('pretrain', 'pretrained')  # stage first
  later = ablation.Run('pretrained', 1, os.path.join(root, 'pretrained', 'seed_1'))
  assert f'--config.init_from={root}/pretrain/seed_1' in ablation.commands(plan, later)[0]
  train_base = ablation.commands(plan, base)[0]
  train_pseudo = ablation.commands(plan, pseudo)[0]
  # real.py:cpu keeps the pseudo masks; the arm that tests them alone turns
  # the other ingredient off, and base turns both off.
  assert '--config.loss.normal_no_lesion_weight=0.0' in train_pseudo
  assert not any('pseudo_weight' in arg for arg in train_pseudo)
  assert '--config.loss.pseudo_weight=0.0' in train_base
  assert 'loss.pseudo_weight=0.0' in ablation.describe_arms(plan)
  # Every arm is evaluated (and tabled) at its last step.
  assert ablation.commands(plan, base)[1][-2:] == ['--checkpoint', 'latest']
  assert ablation.eval_path(plan, base).endswith('eval_validation_latest.json')

  ablation.claim_root(plan, root)
  recorded = json.loads((tmp_path / 'quality' / 'plan.json').read_text())
  assert recorded['arms']['pseudo_masks']['overrides']['loss.normal_no_lesion_weight'] == 0.0
  assert recorded['arms']['together'] == 'cpu'
  changed = ablation.load_plan(str(REPO / 'configs' / 'quality.py'))
  changed['arm_overrides']['pseudo_masks']['loss.normal_no_lesion_weight'] = 1.0
  with pytest.raises(ConfigError, match='arm pseudo_masks'):
    ablation.claim_root(changed, root)
  # Narrowed to one arm, the same root is still this plan's.
  ablation.claim_root(ablation.load_plan(str(REPO / 'configs' / 'quality.py'), 'base'), root)
  # A root recorded before plans chose a checkpoint holds best-checkpoint results.
  older = tmp_path / 'older'
  older.mkdir()
  (older / 'plan.json').write_text(json.dumps(
      {k: v for k, v in recorded.items() if k != 'checkpoint'}))
  with pytest.raises(ConfigError, match='checkpoint differ'):
    ablation.claim_root(plan, str(older))

  # A pseudo_masks run trained without the arm's weight is someone else's run.
  for run, weight in ((pseudo, 0.5), (ablation.Run('pseudo_masks', 1, os.path.join(
      root, 'pseudo_masks', 'seed_1')), 0.0)):
    config = loader.load_config(
        f'{plan["config"]}:cpu', ablation.overrides(plan, run)[:-1] + [
            f'--config.seed={run.seed}', f'--config.loss.pseudo_weight={weight}'])
    os.makedirs(run.workdir)
    with open(os.path.join(run.workdir, 'config.json'), 'w') as f:
      json.dump(config.to_dict(), f)
  # A tuple-valued override (progressive resizing) matches config.json's lists.
  resized = ablation.Run('resize_256', 0, os.path.join(root, 'resize_256', 'seed_0'))
  os.makedirs(resized.workdir)
  with open(os.path.join(resized.workdir, 'config.json'), 'w') as f:
    f.write(loader.to_json(loader.load_config(
        f'{plan["config"]}:cpu', ablation.overrides(plan, resized))))
  assert ablation.foreign_folders(plan, root) == [
      'pseudo_masks/seed_1 (loss.pseudo_weight differ)']

  # A run made before its preset's default changed (not an override) is
  # refused too; one that predates a config field, or differs only in the kept
  # checkpoint's rule (runs are compared at their last step), is not.
  def base_run(seed, edit):
    run = ablation.Run('base', seed, os.path.join(root, 'base', f'seed_{seed}'))
    saved = loader.load_config(f'{plan["config"]}:cpu',
                                      ablation.overrides(plan, run)).to_dict()
    edit(saved)
    os.makedirs(run.workdir)
    with open(os.path.join(run.workdir, 'config.json'), 'w') as f:
      json.dump(saved, f)
  base_run(0, lambda saved: saved['data'].update(elastic_prob=0.0))
  base_run(1, lambda saved: (saved['data'].pop('train_size_schedule'),
                             saved['train'].update(best_metric='dice+auc_covid')))
  assert ablation.foreign_folders(plan, root) == [
      'base/seed_0 (data.elastic_prob differ)',
      'pseudo_masks/seed_1 (loss.pseudo_weight differ)']
  # Narrowed to some arms, the plan still owns (and checks) its other arms' folders.
  narrowed = ablation.load_plan(str(REPO / 'configs' / 'quality.py'), 'base,pretrain')
  assert ablation.foreign_folders(narrowed, root) == [
      'base/seed_0 (data.elastic_prob differ)',
      'pseudo_masks/seed_1 (loss.pseudo_weight differ)']


@pytest.mark.slow
def test_the_arms_of_a_seed_share_one_finished_pretraining_stage(tmp_path, synthetic_data_dir):
  """With `train.pretrain_steps`, every arm of a seed would train the same
  stage first: the sweep links a finished identical one (`same_finished_stage`),
  whether another arm's WORKDIR/pretrain or a plan's standalone pretrain run."""
  import shutil  # pylint: disable=g-import-not-at-top
  from mtl_jax import ablation, train  # pylint: disable=g-import-not-at-top
  from mtl_jax.config import loader, stages  # pylint: disable=g-import-not-at-top
  plan = ablation.load_plan(str(REPO / 'configs' / 'ablation.py') + ':tiny')
  plan['overrides'].update({'data.data_dir': synthetic_data_dir, 'train.pretrain_steps': 4})
  root = str(tmp_path / 'ablation')
  run = lambda arm, seed: ablation.Run(arm, seed, os.path.join(root, arm, f'seed_{seed}'))
  same = lambda p, r: ablation.same_finished_stage(p, r, [root])
  full0, seg0 = run('full', 0), run('seg_only', 0)
  assert same(plan, seg0) is None  # nothing trained yet
  stage = stages.pretrain_config(loader.load_config(
      f'{plan["config"]}:{plan["arms"]["full"]}', ablation.overrides(plan, full0)))
  stage_dir = os.path.join(full0.workdir, stages.PRETRAIN_DIR)
  train.train_and_evaluate(stage, stage_dir, interrupt_at_step=3)
  assert same(plan, seg0) is None  # killed at step 3 of 4: not finished
  train.train_and_evaluate(stage, stage_dir)
  assert same(plan, seg0) == stage_dir  # another arm of the seed: the same stage
  assert same(plan, run('seg_only', 1)) is None  # another seed
  assert same(plan, full0) is None  # a run's own stage is not another's
  for key, value in (('data.rotate_deg', 3.0), ('train.pretrain_steps', 0)):
    assert same(dict(plan, overrides={**plan['overrides'], key: value}), seg0) is None
  standalone = os.path.join(root, 'pretrain', 'seed_0')  # configs/quality.py's `pretrain` arm
  shutil.move(stage_dir, standalone)
  assert same(plan, seg0) == standalone


def test_kept_results_are_finished_runs_and_a_killed_copy_is_no_run(tmp_path):
  """plan_results.keep copies a finished run's results, not its checkpoints;
  the copy counts as finished; a copy a kill left half-done is neither a run
  nor another plan's folder, and the next copy clears it."""
  from mtl_jax import ablation, jsonio, plan_results  # pylint: disable=g-import-not-at-top
  from mtl_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  plan = ablation.load_plan(str(REPO / 'configs' / 'ablation.py:tiny'))
  root, dest = tmp_path / 'runs', tmp_path / 'kept'
  done, unfinished = ablation.runs(plan, str(root))[:2]
  for run, step in ((done, 2), (unfinished, 1)):
    os.makedirs(os.path.join(run.workdir, 'checkpoints', str(step)))
    jsonio.write_json(os.path.join(run.workdir, 'config.json'),
                      ablation._config(plan, run).to_dict())  # pylint: disable=protected-access
    jsonio.write_json(ablation.eval_path(plan, run), {'step': step, 'dice': 0.5})
  stale = dest / 'full' / '.seed_0.tmp999'
  stale.mkdir(parents=True)
  (stale / 'config.json').write_text('{}')
  assert ablation.foreign_folders(plan, str(dest)) == []
  assert plan_results.keep(plan, str(root), str(dest)) == ['full/seed_0']
  assert sorted(os.listdir(dest / 'full')) == ['seed_0']
  assert sorted(os.listdir(dest / 'full' / 'seed_0')) == ['config.json',
                                                          'eval_validation_latest.json']
  kept = ablation.Run('full', 0, str(dest / 'full' / 'seed_0'))
  assert ablation.state(plan, kept) == 'done'
  assert ablation.state(plan, ablation.Run('seg_only', 0, str(dest / 'seg_only' / 'seed_0'))) \
      == 'not started'
  assert json.loads((dest / 'plan.json').read_text())['name'] == 'ablation:tiny'
  with pytest.raises(ConfigError, match='best checkpoint'):
    plan_results.keep({**plan, 'checkpoint': 'best'}, str(root), str(dest))


def test_a_run_kept_under_another_root_is_still_its_arms_run(tmp_path):
  """A fine-tuning arm's init_from names the root it trained in
  ({root}/together/seed_S); its kept copy under another root (--keep_results)
  is still that arm's run, but one that started from another seed's stage is not."""
  from mtl_jax import ablation, jsonio  # pylint: disable=g-import-not-at-top
  plan = ablation.load_plan(str(REPO / 'configs' / 'quality.py'))
  trained = {seed: ablation._config(  # pylint: disable=protected-access
      plan, ablation.Run('finetune_128', seed, str(tmp_path / 'runs' / 'finetune_128' /
                                                   f'seed_{seed}'))).to_dict()
      for seed in (0, 1)}
  assert trained[0]['init_from'] == str(tmp_path / 'runs' / 'together' / 'seed_0')
  trained[1]['init_from'] = trained[0]['init_from']  # seed 1 from seed 0's stage
  kept = tmp_path / 'kept'
  for seed, config in trained.items():
    (kept / 'finetune_128' / f'seed_{seed}').mkdir(parents=True)
    jsonio.write_json(str(kept / 'finetune_128' / f'seed_{seed}' / 'config.json'), config)
  assert ablation.foreign_folders(plan, str(kept)) == ['finetune_128/seed_1 (init_from differ)']


def test_plan_flags_it_would_ignore_are_one_line_errors(tmp_path):
  for flags, message in ((['--config', 'configs/real.py:gpu'],
                          '--config does not go with --plan: choose the plan\'s scale, e.g. '
                          'configs/ablation.py:gpu'),
                         (['--grid', 'optim.learning_rate=1e-3,2e-3'],
                          '--grid does not go with --plan'),
                         (['--split', 'test'], '--split does not go with --plan')):
    result = subprocess.run(SWEEP + ['--root', str(tmp_path), '--dry_run', *flags],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not result.stdout, result.stdout
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr


@pytest.mark.parametrize('scale', ['gpu', 'tpu'])
def test_accelerator_plans_are_the_same_arms_at_the_recipes_length(scale, tmp_path):
  sys.path.insert(0, str(REPO))
  from mtl_jax import ablation  # pylint: disable=g-import-not-at-top
  from mtl_jax.config import loader  # pylint: disable=g-import-not-at-top
  cpu = ablation.load_plan(str(REPO / 'configs/ablation.py'))
  plan = ablation.load_plan(str(REPO / f'configs/ablation.py:{scale}'))
  assert list(plan['arms']) == list(cpu['arms'])
  assert plan['arm_overrides'] == cpu['arm_overrides']
  assert plan['overrides'] == {}  # no CPU-budget shortening
  assert all(p.split(',')[0] == scale for p in plan['arms'].values())
  full = loader.load_config(str(REPO / f'configs/real.py:{plan["arms"]["full"]}'))
  assert full.train.num_train_steps == 20_000 and full.model.widths == \
      loader.load_config(str(REPO / 'configs/real.py:gpu')).model.widths
  if scale == 'tpu':  # configs/tpu.py's hardware deltas on the real recipe
    tpu = loader.load_config(str(REPO / 'configs/tpu.py'))
    for key in ('train.global_batch_size', 'model.compute_dtype', 'model.norm',
                'optim.learning_rate', 'eval.batch_size'):
      section, name = key.split('.')
      assert full[section][name] == tpu[section][name], key
    assert full.hardware.to_dict() == tpu.hardware.to_dict()
    assert full.data.sources.to_dict() == \
        loader.load_config(str(REPO / 'configs/real.py:gpu')).data.sources.to_dict()
  dry = subprocess.run([sys.executable, str(REPO / 'launch' / 'sweep.py'), '--plan',
                        f'configs/ablation.py:{scale}', '--root', str(tmp_path), '--dry_run'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert dry.returncode == 0, dry.stderr
  assert f'--config configs/real.py:{scale},seg_only' in dry.stdout
  # The TPU loop runs the VM checkout's venv on the run's data_dir (launch/tpu_vm.sh).
  loop = [line for line in dry.stdout.splitlines() if line.startswith('gcloud')]
  assert loop and all("'cd mtl-jax && .venv/bin/mtl-jax train" in line
                      and '--config.data.data_dir=' in line for line in loop)
