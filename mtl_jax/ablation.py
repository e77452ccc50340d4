"""A named plan of runs (arms x seeds): its commands, its state, what it can reuse.

A plan (`configs/ablation.py`, `configs/quality.py`) names a base config
file, arms (a preset of it each, optionally with the arm's own overrides),
seeds and overrides shared by every run. Run `ARM` with seed `S`
lives in `ROOT/ARM/seed_S`; `ROOT/plan.json` records the plan, so a root is
never shared by two plans. Running is re-entrant: a finished run (trained to
its last step and evaluated) is skipped, an unfinished one resumes. A plan
compared at the last step (`checkpoint='latest'`) needs only a run's
evaluation of that step, not its checkpoints: results kept without them
(`plan_results.keep`, e.g. in git while the checkpoints lived on scratch)
still count. `plan_results.py` tables what exists.

`launch/sweep.py --plan` is the command line; this module is what it and the
tests share.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shlex

from mtl_jax import checkpointing, evaluation, jsonio
from mtl_jax.config import loader, stages
from mtl_jax.errors import ConfigError

PLAN_FILE = 'plan.json'


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a plan: an arm (a set of overrides) at one seed."""
  arm: str
  seed: int
  workdir: str

  @property
  def name(self) -> str:
    return f'{self.arm}/seed_{self.seed}'


def load_plan(spec: str, arms: str | None = None, seeds: str | None = None,
              baseline: str | None = None) -> dict:
  """The plan of `spec` (FILE.py[:ARG]) as a plain dict, narrowed to `arms`/`seeds`
  ('a,b' / '0,1'), with another arm as the `baseline` the others are compared
  with if given; an unknown arm or seed is a one-line error naming the valid ones."""
  plan = loader.load_config(spec).to_dict()
  plan['arm_overrides'] = {}
  presets = {}
  for arm, preset, *own in plan['arms']:  # (arm, preset[, ((key, value), ...)])
    presets[arm] = preset
    plan['arm_overrides'][arm] = {key: value for key, value in (own[0] if own else ())}
  plan['arms'] = presets
  plan['overrides'] = {key: value for key, value in plan['overrides']}
  plan['seeds'] = [int(s) for s in plan['seeds']]
  plan['checkpoint'] = plan.get('checkpoint', 'best')
  if plan['checkpoint'] not in ('best', 'latest'):
    raise ConfigError(f'{spec}: checkpoint={plan["checkpoint"]!r}; valid: best, latest')
  # The whole plan's arms, for telling its folders from another plan's when narrowed.
  plan['every_arm'] = {'arms': dict(plan['arms']), 'arm_overrides': dict(plan['arm_overrides'])}
  if arms:
    chosen = [a.strip() for a in arms.split(',') if a.strip()]
    unknown = [a for a in chosen if a not in plan['arms']]
    if unknown or not chosen:
      raise ConfigError(f'--arms {arms!r}: unknown arm(s) {unknown}; valid arms of '
                        f'{plan["name"]}: {", ".join(plan["arms"])}')
    plan['arms'] = {a: plan['arms'][a] for a in chosen}
    plan['arm_overrides'] = {a: plan['arm_overrides'][a] for a in chosen}
  if seeds:
    try:
      chosen = [int(s) for s in seeds.split(',') if s.strip()]
    except ValueError:
      chosen = None
    if not chosen or any(s not in plan['seeds'] for s in chosen):
      raise ConfigError(f'--seeds {seeds!r}: valid seeds of {plan["name"]}: '
                        f'{",".join(map(str, plan["seeds"]))}')
    plan['seeds'] = chosen
  if baseline:
    if baseline not in plan['every_arm']['arms']:
      raise ConfigError(f'--baseline {baseline!r}: valid arms of {plan["name"]}: '
                        f'{", ".join(plan["every_arm"]["arms"])}')
    plan['baseline'] = baseline
  if plan['baseline'] not in plan['arms'] and len(plan['arms']) > 1:
    raise ConfigError(f'the baseline arm {plan["baseline"]!r} must be among --arms')
  return plan


def runs(plan: dict, root: str) -> list[Run]:
  """Seed-major: after the first seed every arm has a run to compare."""
  return [Run(arm, seed, os.path.join(root, arm, f'seed_{seed}'))
          for seed in plan['seeds'] for arm in plan['arms']]


def run_overrides(plan: dict, arm: str) -> dict:
  """{key: value} set on every run of `arm`: the plan's, then the arm's own."""
  return {**plan['overrides'], **plan.get('arm_overrides', {}).get(arm, {})}


def overrides(plan: dict, run: Run, extra: dict | None = None) -> list[str]:
  """--config flags of one run. A string value may name another run of the
  plan with `{root}` and `{seed}` (a fine-tuning arm's
  `init_from={root}/pretrain/seed_{seed}`): arms run in order within a seed,
  so the stage it starts from has run first."""
  root = os.path.dirname(os.path.dirname(run.workdir))
  values = {**run_overrides(plan, run.arm), **(extra or {}), 'seed': run.seed}
  values = {k: v.format(root=root, seed=run.seed) if isinstance(v, str) else v
            for k, v in values.items()}
  return [f'--config.{k}={v}' for k, v in values.items()]


def describe_arms(plan: dict) -> str:
  """One Markdown line per arm: what it trains (config preset and overrides)."""
  lines = []
  for arm, preset in plan['arms'].items():
    own = plan.get('arm_overrides', {}).get(arm) or {}
    extra = ''.join(f' `{k}={v}`' for k, v in own.items())
    lines.append(f'- **{arm}**: `{plan["config"]}:{preset}`{extra}')
  return '\n'.join(lines)


def commands(plan: dict, run: Run, mtl_jax: str = 'mtl-jax', launcher: str = '',
             extra: dict | None = None) -> list[list[str]]:
  """[train command, evaluate command] of one run."""
  exe = shlex.split(mtl_jax)
  config = f'{plan["config"]}:{plan["arms"][run.arm]}'
  return [shlex.split(launcher) + exe + ['train', '--config', config, '--workdir',
                                         run.workdir] + overrides(plan, run, extra),
          exe + ['evaluate', '--workdir', run.workdir, '--split', plan['split'],
                 '--checkpoint', plan['checkpoint']]]


def eval_path(plan: dict, run: Run) -> str:
  """The evaluation file of one run (as `mtl-jax evaluate` names it)."""
  return evaluation.results_path(run.workdir, plan['split'], plan['checkpoint'])


def same_finished_run(plan: dict, run: Run, roots) -> str | None:
  """A run folder under one of `roots` (ROOT/NAME or ROOT/ARM/seed_S) that
  trained to its last step exactly what `run` would train (the whole config,
  as `foreign_folders` checks it), e.g. another plan's identical arm or the
  kept results of this plan's run; None if there is none. The sweep links it
  instead of training it again."""
  return _finished_like(_config(plan, run).to_dict(), roots, ('*', '*/seed_*'), run.workdir,
                        _not_compared(plan['checkpoint']), plan)


def same_finished_stage(plan: dict, run: Run, roots) -> str | None:
  """A finished pre-training stage under one of `roots` that is exactly the
  stage `run` trains first (`stages.pretrain_config`; its kept checkpoint is
  what the run starts from, so `best_metric` counts): the arms of a seed
  share one, and another plan's `pretrain` arm can be it. The sweep links it
  as WORKDIR/pretrain. None if `run` has no stage or none matches."""
  config = _config(plan, run)
  if not config.train.pretrain_steps:
    return None
  expected = stages.pretrain_config(config).to_dict()
  return _finished_like(expected, roots, ('*', '*/seed_*', f'*/seed_*/{stages.PRETRAIN_DIR}'),
                        os.path.join(run.workdir, stages.PRETRAIN_DIR), ('preset',))


def _config(plan: dict, run: Run):
  return loader.load_config(f'{plan["config"]}:{plan["arms"][run.arm]}',
                                   overrides(plan, run))


def _finished_like(expected: dict, roots, patterns, exclude: str, ignored,
                   plan: dict | None = None) -> str | None:
  """The first folder (ROOT/PATTERN) trained to its last step with the config
  `expected` (`loader.differences`, less `ignored`), but `exclude`;
  with `plan`, one holding the plan's evaluation of its last step counts too."""
  for root in roots:
    paths = sorted({p for pattern in patterns
                    for p in glob.glob(os.path.join(root, pattern, 'config.json'))})
    for config_path in paths:
      workdir = os.path.dirname(config_path)
      if os.path.realpath(workdir) == os.path.realpath(exclude):
        continue
      with open(config_path, encoding='utf-8') as f:
        saved = json.load(f)
      if loader.differences(saved, expected, ignored):
        continue
      total = saved['train']['num_train_steps']
      if (checkpointing.select_step(workdir, 'latest') == total
          or (plan and evaluated_last_step(plan, workdir, total))):
        return workdir
  return None


def state(plan: dict, run: Run) -> str:
  """'done', 'trained' (not evaluated yet), 'step K of N', or 'not started'.

  Done: trained to its last step, and evaluated at the plan's checkpoint
  (`best`, or `latest`: the last step); an evaluation of an earlier best
  does not count. An evaluation of the last step is enough, checkpoints
  or not (`evaluated_last_step`).
  """
  config_path = os.path.join(run.workdir, 'config.json')
  if not os.path.exists(config_path):
    return 'not started'
  with open(config_path, encoding='utf-8') as f:
    total = int(json.load(f)['train']['num_train_steps'])
  if evaluated_last_step(plan, run.workdir, total):
    return 'done'
  step = checkpointing.select_step(run.workdir, 'latest') or 0
  if step < total:
    return f'step {step} of {total}'
  evaluated = eval_path(plan, run)
  if os.path.exists(evaluated):
    wanted = step if plan['checkpoint'] == 'latest' else (
        checkpointing.select_step(run.workdir, 'best') or step)
    with open(evaluated, encoding='utf-8') as f:
      if json.load(f).get('step') == wanted:
        return 'done'
  return 'trained'


def evaluated_last_step(plan: dict, workdir: str, total: int) -> bool:
  """Whether WORKDIR holds the plan's evaluation of step `total`, its last:
  with `checkpoint='latest'` that evaluation is the run's result, and the run
  needs neither training nor its checkpoints any more."""
  path = evaluation.results_path(workdir, plan['split'], plan['checkpoint'])
  if plan['checkpoint'] != 'latest' or not os.path.exists(path):
    return False
  with open(path, encoding='utf-8') as f:
    return json.load(f).get('step') == total


def claim_root(plan: dict, root: str):
  """Record the plan in ROOT/plan.json, or refuse a root that holds another plan."""
  path = os.path.join(root, PLAN_FILE)
  record = json.loads(json.dumps(jsonio.jsonable(_record(plan))))  # as plan.json holds it
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      kept = json.load(f)
    kept.setdefault('checkpoint', 'best')  # plan.json written before plans chose one
    differ = [k for k in record if k not in ('arms', 'seeds') and kept.get(k) != record[k]]
    differ += [f'arm {a}' for a in record['arms']
               if a in kept.get('arms', {}) and kept['arms'][a] != record['arms'][a]]
    if differ:
      raise ConfigError(f'{root} holds runs of another plan ({", ".join(differ)} differ); '
                        'use another --root')
    record['arms'] = {**kept.get('arms', {}), **record['arms']}
    record['seeds'] = sorted(set(kept.get('seeds', [])) | set(record['seeds']))
  os.makedirs(root, exist_ok=True)
  jsonio.write_json(path, record, sort_keys=True)


def _record(plan: dict) -> dict:
  record = {k: plan[k] for k in ('name', 'config', 'arms', 'seeds', 'overrides', 'split',
                                  'checkpoint')}
  # An arm with its own overrides is recorded with them, so that changing
  # them later is "another plan" for this root.
  record['arms'] = {arm: ({'preset': preset, 'overrides': plan['arm_overrides'][arm]}
                          if plan.get('arm_overrides', {}).get(arm) else preset)
                    for arm, preset in plan['arms'].items()}
  return record


def foreign_folders(plan: dict, root: str) -> list[str]:
  """Run folders under ROOT that this plan did not make: another arm's preset,
  seed or overrides in their config.json, or folders no arm of it names
  (narrowed by --arms, the plan still owns its other arms' folders)."""
  plan = {**plan, **plan.get('every_arm', {})}
  foreign = []
  for arm in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    arm_dir = os.path.join(root, arm)
    if not os.path.isdir(arm_dir):
      continue
    for name in sorted(os.listdir(arm_dir)):
      if name.startswith('.'):  # a copy or removal in progress (plan_results.keep_run)
        continue
      workdir = os.path.join(arm_dir, name)
      config_path = os.path.join(workdir, 'config.json')
      if not os.path.exists(config_path):
        continue
      if arm not in plan['arms'] or not name.startswith('seed_') or not name[5:].isdigit():
        foreign.append(f'{arm}/{name} (not an arm of {plan["name"]})')
        continue
      with open(config_path, encoding='utf-8') as f:
        saved = json.load(f)
      run = Run(arm, int(name[5:]), workdir)
      expected = _config(plan, run).to_dict()
      differ = [key for key in _trained_differently(saved, expected, plan['checkpoint'])
                if not _names_the_run_elsewhere(plan, run, key, saved)]
      if differ:
        foreign.append(f'{arm}/{name} ({", ".join(differ)} differ)')
  return foreign


def _names_the_run_elsewhere(plan: dict, run: Run, key: str, saved: dict) -> bool:
  """Whether the saved config's `key` is the arm's `{root}` value (a stage it
  starts from, e.g. `init_from={root}/together/seed_{seed}`) under another
  root: results kept or moved elsewhere (`--keep_results`) still name the
  root the run trained in, and are the same run."""
  template = run_overrides(plan, run.arm).get(key)
  value = saved
  for part in key.split('.'):
    value = value.get(part) if isinstance(value, dict) else None
  if not (isinstance(template, str) and '{root}' in template and isinstance(value, str)):
    return False
  head, tail = template.format(root='\0', seed=run.seed).split('\0', 1)
  return (len(value) > len(head) + len(tail) and value.startswith(head)
          and value.endswith(tail))


def _trained_differently(saved: dict, expected: dict, checkpoint: str) -> list[str]:
  """Config fields where a run's config.json differs from what its arm trains
  today (`loader.differences`); `train.best_metric` does not matter
  when runs are compared at their last step."""
  return loader.differences(saved, expected, ignored=_not_compared(checkpoint))


def _not_compared(checkpoint: str) -> tuple:
  return ('train.best_metric',) if checkpoint == 'latest' else ()
