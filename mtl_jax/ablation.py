"""A named plan of runs (arms x seeds): its commands, its state, and its results.

A plan (`configs/ablation.py`, `configs/quality.py`) names a base config
file, arms (a preset of it each, optionally with the arm's own overrides),
seeds and overrides shared by every run. Run `ARM` with seed `S`
lives in `ROOT/ARM/seed_S`; `ROOT/plan.json` records the plan, so a root is
never shared by two plans. Running is re-entrant: a finished run (trained to
its last step and evaluated) is skipped, an unfinished one resumes.
Collecting tables what exists, says what is missing, and compares every arm
with the baseline seed by seed (paired t-test over seeds).

`launch/sweep.py --plan` is the command line; this module is what it and the
tests share.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import shlex

import numpy as np

from mtl_jax import checkpointing, config_loader, evaluation, jsonio
from mtl_jax.errors import ConfigError

PLAN_FILE = 'plan.json'
# (label, key in eval_<split>.json); each source's AUC is added per source.
METRICS = (('Dice', 'dice'), ('pooled AUC', 'auc_covid'), ('accuracy', 'accuracy'),
           ('recon MSE', 'recon_mse'),
           # false lesions: the share of a normal slice segmented, lower is better
           ('normal lesion area', 'normal_lesion_area'))


@dataclasses.dataclass(frozen=True)
class Run:
  arm: str
  seed: int
  workdir: str

  @property
  def name(self) -> str:
    return f'{self.arm}/seed_{self.seed}'


def load_plan(spec: str, arms: str | None = None, seeds: str | None = None) -> dict:
  """The plan of `spec` (FILE.py[:ARG]) as a plain dict, narrowed to `arms`/`seeds`
  ('a,b' / '0,1'); an unknown arm or seed is a one-line error naming the valid ones."""
  plan = config_loader.load_config(spec).to_dict()
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
  as `foreign_folders` checks it), e.g. another plan's identical arm; None if
  there is none. The sweep links it instead of training it again."""
  expected = config_loader.load_config(f'{plan["config"]}:{plan["arms"][run.arm]}',
                                       overrides(plan, run)).to_dict()
  for root in roots:
    for config_path in sorted(glob.glob(os.path.join(root, '*', 'config.json'))
                              + glob.glob(os.path.join(root, '*', 'seed_*', 'config.json'))):
      workdir = os.path.dirname(config_path)
      if os.path.realpath(workdir) == os.path.realpath(run.workdir):
        continue
      with open(config_path, encoding='utf-8') as f:
        saved = json.load(f)
      if (not _trained_differently(saved, expected, plan['checkpoint'])
          and checkpointing.select_step(workdir, 'latest')
          == saved['train']['num_train_steps']):
        return workdir
  return None


def state(plan: dict, run: Run) -> str:
  """'done', 'trained' (not evaluated yet), 'step K of N', or 'not started'.

  Done: trained to its last step, and evaluated at the plan's checkpoint
  (`best`, or `latest`: the last step); an evaluation of an earlier best
  does not count.
  """
  config_path = os.path.join(run.workdir, 'config.json')
  if not os.path.exists(config_path):
    return 'not started'
  with open(config_path, encoding='utf-8') as f:
    total = int(json.load(f)['train']['num_train_steps'])
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
      workdir = os.path.join(arm_dir, name)
      config_path = os.path.join(workdir, 'config.json')
      if not os.path.exists(config_path):
        continue
      if arm not in plan['arms'] or not name.startswith('seed_') or not name[5:].isdigit():
        foreign.append(f'{arm}/{name} (not an arm of {plan["name"]})')
        continue
      with open(config_path, encoding='utf-8') as f:
        saved = json.load(f)
      expected = config_loader.load_config(f'{plan["config"]}:{plan["arms"][arm]}',
                                           overrides(plan, Run(arm, int(name[5:]), workdir)))
      differ = _trained_differently(saved, expected.to_dict(), plan['checkpoint'])
      if differ:
        foreign.append(f'{arm}/{name} ({", ".join(differ)} differ)')
  return foreign


def _trained_differently(saved: dict, expected: dict, checkpoint: str) -> list[str]:
  """Config fields where a run's config.json differs from what its arm trains
  today (`config_loader.differences`); `train.best_metric` does not matter
  when runs are compared at their last step."""
  return config_loader.differences(
      saved, expected, ignored=('train.best_metric',) if checkpoint == 'latest' else ())


def _lookup(tree: dict, dotted: str):
  for key in dotted.split('.'):
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return json.loads(json.dumps(tree, default=list))  # tuples as config.json holds them


def collect(plan: dict, root: str) -> tuple[list[dict], list[str]]:
  """(one row per finished run: arm, seed and its figures; what is missing)."""
  foreign = foreign_folders(plan, root)
  if foreign:
    raise ConfigError(f'{root} mixes runs of another plan or settings: '
                      + '; '.join(foreign) + ': move them away or use another --root')
  rows, missing = [], []
  for run in runs(plan, root):
    status = state(plan, run)
    if status != 'done':
      missing.append(f'{run.name} ({status})')
      continue
    with open(eval_path(plan, run), encoding='utf-8') as f:
      results = json.load(f)
    row = {'arm': run.arm, 'seed': run.seed, 'step': results.get('step')}
    for key in metric_keys([results]):
      row[key] = _lookup(results, key.replace('/', '.'))
      row[key + '_ci95'] = _lookup(results, (key + '_ci95').replace('/', '.'))
    rows.append(row)
  return rows, missing


def metric_keys(results: list[dict]) -> list[str]:
  keys = [k for _, k in METRICS]
  sources = sorted({s for r in results for s in (r.get('by_source') or {})})
  keys += [f'by_source/{s}/auc_covid' for s in sources]
  return keys


def _label(key: str) -> str:
  return dict((k, l) for l, k in METRICS).get(key) or f'{key.split("/")[1]} AUC'


def _values(rows, arm, key) -> dict:
  return {r['seed']: r[key] for r in rows if r['arm'] == arm and r.get(key) is not None}


def keys_present(rows) -> list[str]:
  ordered = [k for _, k in METRICS] + sorted(
      {k for r in rows for k in r if k.startswith('by_source/') and not k.endswith('_ci95')})
  return [k for k in ordered if any(r.get(k) is not None for r in rows)]


def summary_table(plan: dict, rows: list[dict]) -> str:
  """Markdown: per arm and metric, mean ± sd over seeds, then the mean of the
  runs' own bootstrap 95% CIs (example sampling) in brackets."""
  keys = keys_present(rows)
  lines = ['| arm | seeds | ' + ' | '.join(_label(k) for k in keys) + ' |',
           '|---|---|' + '---|' * len(keys)]
  for arm in plan['arms']:
    seeds = sorted({r['seed'] for r in rows if r['arm'] == arm})
    cells = []
    for key in keys:
      values = list(_values(rows, arm, key).values())
      if not values:
        cells.append('-')
        continue
      spread = f'{np.std(values, ddof=1):.3f}' if len(values) > 1 else '- (1 seed)'
      cell = f'{np.mean(values):.3f} ± {spread}'
      cis = [r[key + '_ci95'] for r in rows if r['arm'] == arm and r.get(key + '_ci95')]
      if cis:
        cell += f' [{np.mean([c[0] for c in cis]):.3f}, {np.mean([c[1] for c in cis]):.3f}]'
      cells.append(cell)
    lines.append(f'| {arm} | {len(seeds)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def paired_table(plan: dict, rows: list[dict]) -> str:
  """Markdown: each arm minus the baseline, seed by seed, with a paired t-test."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  base = plan['baseline']
  lines = [f'| arm | metric | mean difference (arm - {base}) | seeds paired | t | p |',
           '|---|---|---|---|---|---|']
  for arm in plan['arms']:
    if arm == base:
      continue
    for key in keys_present(rows):
      ours, theirs = _values(rows, base, key), _values(rows, arm, key)
      seeds = sorted(set(ours) & set(theirs))
      if not seeds:
        continue
      diff = np.array([theirs[s] - ours[s] for s in seeds])
      if len(seeds) > 1 and np.std(diff) > 0:
        test = stats.ttest_rel([theirs[s] for s in seeds], [ours[s] for s in seeds])
        t, p = f'{test.statistic:.2f}', f'{test.pvalue:.3f}'
      else:
        t, p = '-', '- (needs 2+ seeds, and differences that vary)'
      lines.append(f'| {arm} | {_label(key)} | {diff.mean():+.4f} | {len(seeds)} | {t} | {p} |')
  return '\n'.join(lines)


def bar_chart(plan: dict, rows: list[dict], path: str):
  """One panel per metric: each arm's mean over seeds, error bars ±1 sd, seeds as dots."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = keys_present(rows)
  cols = min(4, max(1, len(keys)))
  fig_rows = -(-len(keys) // cols) or 1
  fig, axes = plt.subplots(fig_rows, cols, figsize=(3.2 * cols, 3.0 * fig_rows),
                           squeeze=False, constrained_layout=True)
  arms = list(plan['arms'])
  for ax, key in zip(axes.flat, keys):
    for i, arm in enumerate(arms):
      values = list(_values(rows, arm, key).values())
      if not values:
        continue
      sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
      ax.bar(i, np.mean(values), yerr=sd, capsize=4, color=f'C{i}', alpha=0.7)
      ax.plot([i] * len(values), values, 'k.', markersize=4)
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha='right', fontsize=8)
    ax.set_title(_label(key), fontsize=9)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis('off')
  fig.suptitle(f'{plan["name"]}: mean ± sd over seeds ({plan["split"]})', fontsize=10)
  tmp = f'{path}.tmp{os.getpid()}.png'
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)


def write_csv(rows: list[dict], path: str):
  fields = ['arm', 'seed', 'step'] + keys_present(rows)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)
