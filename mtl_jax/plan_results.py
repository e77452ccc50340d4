"""A plan's results: one row per finished run, tables, a chart and a CSV.

Collecting tables what exists, says what is missing, and compares every arm
with the baseline seed by seed (paired t-test over seeds). Keeping copies
each finished run's result files (config, evaluation, validation history:
kilobytes, no checkpoints) to another root, where they still count as
finished runs: results outlive a purged scratch folder, and a later sweep
links them instead of training again. The plan and its runs are
`ablation.py`'s.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil

import numpy as np

from mtl_jax import history, jsonio
from mtl_jax.ablation import claim_root, eval_path, foreign_folders, runs, state
from mtl_jax.errors import ConfigError

# (label, key in eval_<split>.json); each source's AUC is added per source.
METRICS = (('Dice (pooled)', 'dice'), ('pooled AUC', 'auc_covid'),
           ('accuracy (pooled)', 'accuracy'),
           ('recon MSE', 'recon_mse'),
           # false lesions: the share of a normal slice segmented, lower is better
           ('normal lesion area', 'normal_lesion_area'))


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


def fmt(value: float, sign: bool = False) -> str:
  """Three significant digits: a Dice of 0.705, an MSE of 0.0105 and a
  lesion area of 1.39e-05 all keep their information (fixed decimals showed
  the last two as 0.000)."""
  return f'{value:+#.3g}' if sign else f'{value:#.3g}'


SUMMARY_NOTE = ('± is the sample sd over seeds (ddof 1); [a, b] is the mean over seeds of each '
                "run's own 95% bootstrap CI over the validation slices, the uncertainty from "
                'the slices alone: it is not a CI of the mean over seeds, and arms scored on the '
                'same slices are compared in the paired table, not by overlapping brackets. Dice '
                'pools pixels over every validation slice with a ground-truth mask (pseudo masks '
                'never count); accuracy is 3-class, pooled over every labelled slice.')


def summary_table(plan: dict, rows: list[dict]) -> str:
  """Markdown: per arm and metric, mean ± sd over seeds, then the mean of the
  runs' own bootstrap 95% CIs (example sampling) in brackets; a note says so."""
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
      cell = fmt(np.mean(values))  # one seed: no spread to show (the seeds column says so)
      if len(values) > 1:
        cell += f' ± {fmt(np.std(values, ddof=1))}'
      cis = [r[key + '_ci95'] for r in rows if r['arm'] == arm and r.get(key + '_ci95')]
      if cis:
        cell += f' [{fmt(np.mean([c[0] for c in cis]))}, {fmt(np.mean([c[1] for c in cis]))}]'
      cells.append(cell)
    lines.append(f'| {arm} | {len(seeds)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n\n' + SUMMARY_NOTE


def holm(pvalues: list[float]) -> list[float]:
  """Holm's step-down adjustment of a family of p-values (same order): with
  five arms against one baseline, one raw p < 0.05 in five is expected by
  chance on a metric where no arm differs."""
  order = np.argsort(pvalues)
  adjusted, running = [0.0] * len(pvalues), 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
    adjusted[i] = running
  return adjusted


def paired_differences(plan: dict, rows: list[dict]) -> list[tuple[str, str, np.ndarray]]:
  """(arm, metric key, arm minus the baseline for each seed both have), for
  every arm but the baseline and every metric it shares with it: the numbers
  both the paired table and the difference chart show."""
  base, out = plan['baseline'], []
  for arm in plan['arms']:
    if arm == base:
      continue
    for key in keys_present(rows):
      ours, theirs = _values(rows, base, key), _values(rows, arm, key)
      seeds = sorted(set(ours) & set(theirs))
      if seeds:
        out.append((arm, key, np.array([theirs[s] - ours[s] for s in seeds])))
  return out


def paired_table(plan: dict, rows: list[dict]) -> str:
  """Markdown: each arm minus the baseline, seed by seed, with a paired t-test
  (two-sided, over the seeds both have) and its p Holm-adjusted over the arms
  tested on that metric; a note says so."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  tests = []  # (arm, key, differences, t, p or a reason there is none)
  for arm, key, diff in paired_differences(plan, rows):
    if len(diff) < 2:
      tests.append((arm, key, diff, None, '- (one seed)'))
    elif np.std(diff) <= 1e-12 * max(1.0, abs(diff.mean())):
      tests.append((arm, key, diff, None, '- (the same difference in every seed: no spread)'))
    else:  # a paired t-test is the one-sample test of the differences against 0
      test = stats.ttest_1samp(diff, 0.0)
      tests.append((arm, key, diff, test.statistic, float(test.pvalue)))
  adjusted = {}
  for key in {key for _, key, *_ in tests}:
    family = [(arm, p) for arm, k, _, _, p in tests if k == key and isinstance(p, float)]
    adjusted.update({(arm, key): a for (arm, _), a in zip(family, holm([p for _, p in family]))})
  lines = [f'| arm | metric | mean difference (arm - {plan["baseline"]}) | sd of differences '
           '| seeds paired | t | p | p (Holm) |', '|---|---|---|---|---|---|---|---|']
  for arm, key, diff, t, p in tests:
    sd = '-' if len(diff) < 2 else '0' if t is None else fmt(np.std(diff, ddof=1))
    cells = ([f'{t:.2f}', f'{p:.3f}', f'{adjusted[(arm, key)]:.3f}'] if t is not None
             else ['-', p, '-'])
    lines.append(f'| {arm} | {_label(key)} | {fmt(diff.mean(), sign=True)} | {sd} | {len(diff)} | '
                 + ' | '.join(cells) + ' |')
  note = ('t and p: two-sided paired t-test over the seeds both arms have (df = seeds - 1); '
          'p (Holm): adjusted over the arms tested on the same metric. With 2-3 seeds only '
          'large, consistent differences can reach p < 0.05.')
  return '\n'.join(lines) + '\n\n' + note


def _panels(keys: list[str]):
  """A figure with one panel per metric, four to a row; unused panels hidden."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = min(4, max(1, len(keys)))
  fig_rows = -(-len(keys) // cols) or 1
  fig, axes = plt.subplots(fig_rows, cols, figsize=(3.2 * cols, 3.0 * fig_rows),
                           squeeze=False, constrained_layout=True)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis('off')
  return fig, list(axes.flat)[:len(keys)]


def _save(fig, path: str):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tmp = f'{path}.tmp{os.getpid()}.png'
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)


def bar_chart(plan: dict, rows: list[dict], path: str):
  """One panel per metric: each arm's mean over seeds, error bars ±1 sd, seeds as dots."""
  keys = keys_present(rows)
  fig, axes = _panels(keys)
  arms = list(plan['arms'])
  for ax, key in zip(axes, keys):
    for i, arm in enumerate(arms):
      values = list(_values(rows, arm, key).values())
      if not values:
        continue
      sd = np.std(values, ddof=1) if len(values) > 1 else None  # no bar: not a zero spread
      ax.bar(i, np.mean(values), yerr=sd, capsize=4, color=f'C{i}', alpha=0.7)
      ax.plot([i] * len(values), values, 'k.', markersize=4)
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha='right', fontsize=8)
    ax.set_title(_label(key), fontsize=9)
  fig.suptitle(f'{plan["name"]}: mean ± sd over seeds ({plan["split"]})', fontsize=10)
  _save(fig, path)


def difference_chart(plan: dict, rows: list[dict], path: str):
  """One panel per metric: each arm minus the baseline, one dot per seed and
  a line at their mean, around a zero line. The bar chart starts at 0, where
  a 0.04 Dice gap between 0.70 and 0.74 is hard to see; this is the chart of
  what the paired table tests. False, and nothing written, before any arm
  has a seed in common with the baseline."""
  diffs = paired_differences(plan, rows)
  paired_keys = {key for _, key, _ in diffs}
  keys = [k for k in keys_present(rows) if k in paired_keys]
  if not keys:
    return False
  fig, axes = _panels(keys)
  arms = [a for a in plan['arms'] if a != plan['baseline']]
  for ax, key in zip(axes, keys):
    ax.axhline(0.0, color='k', linewidth=0.8)
    for arm, k, diff in diffs:
      if k != key:
        continue
      i, color = arms.index(arm), f'C{list(plan["arms"]).index(arm)}'  # the bar chart's colours
      ax.plot([i] * len(diff), diff, '.', color=color, markersize=7)
      ax.plot([i - 0.3, i + 0.3], [diff.mean()] * 2, color=color, linewidth=2)
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha='right', fontsize=8)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_title(f'{_label(key)}: arm - {plan["baseline"]}', fontsize=9)
  fig.suptitle(f'{plan["name"]}: each arm minus {plan["baseline"]}, seed by seed '
               f'(dots), mean (line) ({plan["split"]})', fontsize=10)
  _save(fig, path)
  return True


def write_csv(rows: list[dict], path: str):
  fields = ['arm', 'seed', 'step'] + keys_present(rows)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)


# What a finished run's result is: what it trained, its evaluation, its curve.
KEPT_FILES = ('config.json', history.FILE)


def keep(plan: dict, root: str, dest: str) -> list[str]:
  """Copy every finished run's result files from ROOT to DEST (`keep_run`);
  the names of the runs kept."""
  claim(plan, dest)
  return [run.name for run in runs(plan, root) if keep_run(plan, run, dest)]


def claim(plan: dict, dest: str):
  """DEST records the plan as a root does (and refuses another plan's). Only
  a plan compared at the last step can be kept without checkpoints."""
  if plan['checkpoint'] != 'latest':
    raise ConfigError(f'plan {plan["name"]} compares each run at its best checkpoint, '
                      'which needs the checkpoints: keep the whole run folders instead')
  claim_root(plan, dest)


def keep_run(plan: dict, run, dest: str) -> bool:
  """Copy one run's result files to DEST/ARM/seed_S (`copy_results`) if it
  is finished; whether it was (a run linked from DEST is already there)."""
  if state(plan, run) != 'done':
    return False
  copy_results(run.workdir, os.path.join(dest, run.arm, f'seed_{run.seed}'),
               eval_path(plan, run))
  return True


def copy_results(workdir: str, target: str, evaluated: str):
  """WORKDIR's config, validation history and the evaluation `evaluated` to
  TARGET, replaced whole; nothing if TARGET is WORKDIR (linked from there)."""
  if os.path.realpath(workdir) == os.path.realpath(target):
    return
  parent, name = os.path.split(os.path.abspath(target))
  # Written aside (hidden, so no reader takes it for a run), then renamed in.
  for stale in glob.glob(os.path.join(parent, f'.{name}.tmp*')):
    shutil.rmtree(stale, ignore_errors=True)  # what a killed copy left
  tmp = os.path.join(parent, f'.{name}.tmp{os.getpid()}')
  os.makedirs(tmp)
  for path in [os.path.join(workdir, n) for n in KEPT_FILES] + [evaluated]:
    if os.path.exists(path):
      shutil.copy2(path, tmp)
  jsonio.replace_dir(tmp, target)
