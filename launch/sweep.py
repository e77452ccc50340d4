#!/usr/bin/env python3
"""Run a named plan of arms x seeds, or a grid of config overrides; print or tabulate them.

  launch/sweep.py --plan configs/ablation.py --root runs/ablation \\
      [--arms full,seg_only] [--seeds 0,1] [--set K=V ...] [--dry_run | --collect]
  launch/sweep.py --config configs/default.py:demo --root runs/sweep \\
      --grid loss.weights.recon=0,1 --grid optim.learning_rate=1e-3,2e-3 [--set K=V ...] \\
      [--dry_run | --collect] [--jobs 1] [--launcher 'launch/local_cluster.sh -n 2 --']

A plan (`--plan FILE.py[:ARG]`, e.g. configs/ablation.py) runs each arm with
each seed in ROOT/ARM/seed_S, each followed by `mtl-jax evaluate`. It is
re-entrant: finished runs are skipped, unfinished ones resume. `--collect`
writes ROOT/results.md (mean ± sd over seeds, CIs, and each arm against the
baseline with a paired t-test over seeds), ROOT/results.png (mean ± sd),
ROOT/results_diff.png (each arm minus the baseline, seed by seed) and
ROOT/results.csv from what exists, and lists what is missing. `--dry_run`
prints the plan as a SLURM array job (each task cds into the repo and runs
its venv's mtl-jax on the run's data_dir; `--time`, `--gpus_per_task`,
`--sbatch FILE` to write it) and as a TPU-VM loop. `--reuse_from
ROOT2` links a finished run under ROOT2 whose whole config is what a run
would train (e.g. ablation:length_check's `full` runs are real.py:cpu at its
own length, the same as a quality plan arm's) instead of training it again;
its evaluation is then shared too. A run with a pre-training stage
(`train.pretrain_steps`) starts from a finished identical stage when the
plan's root or a --reuse_from root has one (another arm's of the same seed,
or a plan's standalone `pretrain` run): linked as WORKDIR/pretrain.
`--keep_results DIR` copies each finished run's results (config,
evaluation, validation history; kilobytes, no checkpoints) to DIR: a plan
compared at the last step counts them as finished runs, so `--collect
--root DIR` tables them and `--reuse_from DIR` links them after ROOT is gone.

A grid gives each point its own workdir under --root, named by its
overrides, run locally in a queue (`--jobs` at a time); `--dry_run` prints
the commands; `--collect` gathers every run's eval_<split>.json into one
Markdown table (stdout) and a CSV (ROOT/results.csv).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shlex
import subprocess
import sys
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLUMNS = ('dice', 'iou', 'hd95', 'accuracy', 'auc_covid', 'auc_macro', 'recon_mse')


def expand(grid: list[str]) -> list[dict]:
  """['a=1,2', 'b=x'] -> [{'a': '1', 'b': 'x'}, {'a': '2', 'b': 'x'}]."""
  axes = []
  for item in grid:
    key, sep, values = item.partition('=')
    if not sep or not values:
      raise SystemExit(f'--grid {item!r} must look like KEY=V1,V2,...')
    axes.append([(key, v) for v in values.split(',')])
  return [dict(point) for point in itertools.product(*axes)]


def run_name(point: dict) -> str:
  name = '_'.join(f'{k.split(".")[-1]}={v}' for k, v in point.items()) or 'base'
  return ''.join(c if c.isalnum() or c in '=._-' else '-' for c in name)


def commands(args, point: dict) -> list[list[str]]:
  workdir = os.path.join(args.root, run_name(point))
  overrides = [f'--config.{k}={v}' for k, v in {**_pairs(args.set), **point}.items()]
  launcher = shlex.split(args.launcher) if args.launcher else []
  train = launcher + [args.mtl_jax, 'train', '--config', args.config,
                      '--workdir', workdir] + overrides
  evaluate = [args.mtl_jax, 'evaluate', '--workdir', workdir, '--split', args.split]
  return [train, evaluate]


def _pairs(items):
  return dict(item.split('=', 1) for item in items)


def collect(root: str, split: str) -> list[dict]:
  rows = []
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    path = os.path.join(root, name, f'eval_{split}.json')
    if os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
      rows.append({'run': name, **{c: results.get(c) for c in COLUMNS}})
  return rows


def markdown(rows: list[dict]) -> str:
  fmt = lambda v: '-' if v is None else (f'{v:.4f}' if isinstance(v, float) else str(v))
  lines = ['| run | ' + ' | '.join(COLUMNS) + ' |', '|---' * (len(COLUMNS) + 1) + '|']
  lines += ['| ' + ' | '.join(fmt(r[c]) for c in ('run',) + COLUMNS) + ' |' for r in rows]
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n\n', 1)[1])
  parser.add_argument('--plan', default=None, help='a plan file, e.g. configs/ablation.py')
  parser.add_argument('--arms', default=None, help='with --plan: only these arms (a,b)')
  parser.add_argument('--seeds', default=None, help='with --plan: only these seeds (0,1)')
  parser.add_argument('--baseline', default=None,
                      help='with --plan: the arm the others are compared with, if not the '
                      'plan\'s own (e.g. a later recipe)')
  parser.add_argument('--config', default=None,
                      help='a grid\'s config (default: configs/default.py:demo); a plan names '
                      'its own: choose the plan\'s variant instead (configs/ablation.py:gpu)')
  parser.add_argument('--root', default='runs/sweep')
  parser.add_argument('--grid', action='append', default=[], help='KEY=V1,V2,...')
  parser.add_argument('--set', action='append', default=[], help='KEY=V for every run')
  parser.add_argument('--split', default=None,
                      help='a grid\'s evaluation split (default: validation); a plan has its own')
  parser.add_argument('--jobs', type=int, default=1)
  parser.add_argument('--launcher', default='', help='prefix for each train command')
  parser.add_argument('--mtl_jax', default='mtl-jax',
                      help='the mtl-jax executable (a --plan\'s SLURM array: the repo venv\'s)')
  parser.add_argument('--time', default='24:00:00',
                      help='with --plan --dry_run: the SLURM time limit of each run')
  parser.add_argument('--gpus_per_task', type=int, default=1,
                      help='with --plan --dry_run: GPUs per SLURM array task (0: a CPU node)')
  parser.add_argument('--sbatch', default=None, metavar='FILE',
                      help='with --plan --dry_run: also write the SLURM array to FILE')
  parser.add_argument('--reuse_from', action='append', default=[],
                      help='with --plan: a root (e.g. another plan\'s) whose finished run of '
                      'exactly the same config is linked instead of trained again')
  parser.add_argument('--keep_results', default=None, metavar='DIR',
                      help='with --plan: copy each finished run\'s config, evaluation and '
                      'validation history (no checkpoints) to DIR/ARM/seed_S')
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument('--dry_run', action='store_true')
  mode.add_argument('--collect', action='store_true')
  args = parser.parse_args(argv)
  if args.sbatch and not (args.plan and args.dry_run):
    parser.error('--sbatch FILE goes with --plan ... --dry_run')
  if args.plan:
    # A plan names its config, runs and split: a flag that would change them
    # is a one-line error, never silently ignored.
    for flag, given, instead in (
        ('--config', args.config, 'choose the plan\'s scale, e.g. '
         f'{args.plan.split(":")[0]}:gpu or :tpu'),
        ('--grid', args.grid, 'a plan\'s runs are its arms x seeds: --set KEY=VALUE changes '
         'every run, an arm with its own overrides goes in the plan file'),
        ('--split', args.split, 'the plan evaluates on its own split (plan.split); '
         '`mtl-jax evaluate --workdir RUN --split S` evaluates a finished run on another')):
      if given:
        print(f'sweep.py: {flag} does not go with --plan: {instead}', file=sys.stderr)
        return 2
    return run_plan(args)
  args.config = args.config or 'configs/default.py:demo'
  args.split = args.split or 'validation'

  if not args.collect:
    points = expand(args.grid)
    if args.dry_run:
      for point in points:
        for cmd in commands(args, point):
          print(shlex.join(cmd))
      return 0

    def run(point):
      for cmd in commands(args, point):
        if subprocess.run(cmd).returncode:
          return f'{run_name(point)}: failed: {shlex.join(cmd)}'
      return None

    with futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
      failures = [f for f in pool.map(run, points) if f]
    for failure in failures:
      print(failure, file=sys.stderr)
  rows = collect(args.root, args.split)
  print(markdown(rows))
  if rows:
    with open(os.path.join(args.root, 'results.csv'), 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=('run',) + COLUMNS)
      writer.writeheader()
      writer.writerows(rows)
  return 1 if not args.collect and failures else 0


def run_plan(args) -> int:
  """--plan: run (re-entrant), --dry_run or --collect."""
  from mtl_jax import ablation, plan_results  # pylint: disable=g-import-not-at-top
  from mtl_jax.config import stages  # pylint: disable=g-import-not-at-top
  from mtl_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    plan = ablation.load_plan(args.plan, args.arms, args.seeds, args.baseline)
    plan['overrides'].update(_pairs(args.set))  # recorded and checked with the plan's own
    extra = {}
    todo = ablation.runs(plan, args.root)
    if args.dry_run:
      print(dry_run(plan, todo, args, extra))
      return 0
    failures = []
    if not args.collect:
      ablation.claim_root(plan, args.root)
      foreign = ablation.foreign_folders(plan, args.root)
      if foreign:
        raise UserError(f'{args.root} holds other runs: {"; ".join(foreign)}')
      if args.keep_results:
        plan_results.claim(plan, args.keep_results)

      def run(item):
        status = ablation.state(plan, item)
        same = (ablation.same_finished_run(plan, item, args.reuse_from)
                if status == 'not started' and args.reuse_from else None)
        if same:
          os.makedirs(os.path.dirname(item.workdir), exist_ok=True)
          os.symlink(os.path.abspath(same), item.workdir)
          print(f'{item.name}: the same run as {same}: linked', flush=True)
          status = ablation.state(plan, item)
        stage_dir = os.path.join(item.workdir, stages.PRETRAIN_DIR)
        stage = (ablation.same_finished_stage(plan, item, [args.root] + args.reuse_from)
                 if status == 'not started' and not os.path.lexists(stage_dir) else None)
        if stage:  # the same pre-training stage, finished: the arms of a seed share it
          os.makedirs(item.workdir, exist_ok=True)
          os.symlink(os.path.abspath(stage), stage_dir)
          print(f'{item.name}: its pre-training stage is {stage}: linked', flush=True)
        if status == 'done':
          print(f'{item.name}: done, skipped', flush=True)
          return None
        train, evaluate = ablation.commands(plan, item, args.mtl_jax, args.launcher, extra)
        print(f'{item.name}: {status}: running', flush=True)
        for cmd in ([evaluate] if status == 'trained' else [train, evaluate]):
          if subprocess.run(cmd).returncode:
            return f'{item.name}: failed: {shlex.join(cmd)}'
        if args.keep_results:  # as soon as it is finished: a sweep may not live to the end
          plan_results.keep_run(plan, item, args.keep_results)
        return None

      with futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        failures = [f for f in pool.map(run, todo) if f]
    rows, missing = plan_results.collect(plan, args.root)
    if args.keep_results:
      kept = plan_results.keep(plan, args.root, args.keep_results)
      print(f'results of {len(kept)} runs kept in {args.keep_results}', flush=True)
  except UserError as e:
    print(f'sweep: error: {e}', file=sys.stderr)
    return 2
  report = (f'## {plan["name"]} ({plan["split"]}, {len(rows)} of {len(todo)} runs)\n\n'
            + ablation.describe_arms(plan) + '\n\n'
            + plan_results.summary_table(plan, rows) + '\n\n'
            + plan_results.paired_table(plan, rows) + '\n')
  if missing:
    report += '\nMissing: ' + ', '.join(missing) + '\n'
  print(report)
  if rows:
    os.makedirs(args.root, exist_ok=True)
    with open(os.path.join(args.root, 'results.md'), 'w', encoding='utf-8') as f:
      f.write(report)
    plan_results.write_csv(rows, os.path.join(args.root, 'results.csv'))
    plan_results.bar_chart(plan, rows, os.path.join(args.root, 'results.png'))
    diff_png = os.path.join(args.root, 'results_diff.png')
    if not plan_results.difference_chart(plan, rows, diff_png) and os.path.exists(diff_png):
      os.remove(diff_png)  # no pair yet: an earlier collect's chart would pass for this one's
  else:  # no finished run: an earlier collect's files would pass for this one's
    for name in ('results.md', 'results.csv', 'results.png', 'results_diff.png'):
      if os.path.exists(os.path.join(args.root, name)):
        os.remove(os.path.join(args.root, name))
  for failure in failures:
    print(failure, file=sys.stderr)
  return 1 if failures else 0


def dry_run(plan, todo, args, extra) -> str:
  """The plan as a SLURM array job (one run per task) and as a TPU-VM loop."""
  slurm = slurm_array(plan, args, extra)
  if args.sbatch:
    with open(args.sbatch, 'w', encoding='utf-8') as f:
      f.write(slurm)
  tpu = ['# TPU VM: NAME and ZONE of a VM set up as in launch/tpu_vm.sh; runs one after',
         '# another, each resuming where it stopped if the loop is restarted. Each runs',
         '# the VM checkout\'s .venv/bin/mtl-jax in ~/mtl-jax on the data_dir of its',
         '# config (--set data.data_dir=gs://BUCKET/data for a bucket every worker reads).']
  tpu += [f'gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all '
          f'--command {shlex.quote("cd mtl-jax && " + line)} || exit 1'
          for line in tpu_lines(plan, todo, args, extra)]
  return ('# --- SLURM array (save as ablation.sbatch; sbatch ablation.sbatch) ---\n'
          + slurm + '\n# --- TPU VM loop ---\n' + '\n'.join(tpu))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _in_repo(path: str) -> str:
  """`path` as the array job, which runs in the repo, must name it: as given
  when sweep.py runs in the repo (a run's config.json then records what a
  local sweep would), else absolute."""
  if os.path.isabs(path) or os.path.realpath(os.getcwd()) == os.path.realpath(REPO):
    return path
  return os.path.abspath(path)


def slurm_array(plan, args, extra) -> str:
  """The plan as a SLURM array job, one run per task, each followed by its
  evaluation: it runs in the repo with the repo's venv (VENV), names the
  data_dir each run reads, and asks for --time (a requeued task resumes)."""
  from mtl_jax import ablation  # pylint: disable=g-import-not-at-top
  from mtl_jax.config import loader  # pylint: disable=g-import-not-at-top
  plan = {**plan, 'config': _in_repo(plan['config'])}
  todo = ablation.runs(plan, _in_repo(args.root))
  exe = '"$VENV/bin/mtl-jax"' if args.mtl_jax == 'mtl-jax' else args.mtl_jax
  launcher = shlex.join(shlex.split(args.launcher)) + ' ' if args.launcher else ''
  lines = []
  for item in todo:
    config = loader.load_config(f'{plan["config"]}:{plan["arms"][item.arm]}',
                                       ablation.overrides(plan, item, extra))
    data = {**extra, 'data.data_dir': _in_repo(config.data.data_dir)}
    train, evaluate = ablation.commands(plan, item, '', '', data)  # no executable: exe's
    lines.append(f'{launcher}{exe} {shlex.join(train)} && {exe} {shlex.join(evaluate)}')
  slurm = ['#!/usr/bin/env bash',
           f'# {plan["name"]}: {len(todo)} runs, one per array task; a requeued task '
           'resumes its run.',
           f'# Runs in {REPO} with $VENV/bin/mtl-jax (VENV: default the repo\'s .venv).',
           f'#SBATCH --job-name={plan["name"]}', f'#SBATCH --array=0-{len(todo) - 1}']
  if args.gpus_per_task:
    slurm.append(f'#SBATCH --gpus-per-task={args.gpus_per_task}')
  slurm += [f'#SBATCH --time={args.time}', '#SBATCH --requeue', 'set -euo pipefail',
            f'cd {shlex.quote(REPO)}',
            f'VENV="${{VENV:-{shlex.quote(os.path.join(REPO, ".venv"))}}}"',
            'case "$SLURM_ARRAY_TASK_ID" in']
  slurm += [f'  {i}) {line} ;;' for i, line in enumerate(lines)]
  slurm += ['  *) echo "no run $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;', 'esac']
  return '\n'.join(slurm) + '\n'


def tpu_lines(plan, todo, args, extra) -> list[str]:
  """Each run's train && evaluate as the TPU VM runs them in its `mtl-jax`
  checkout (launch/tpu_vm.sh): with its .venv's mtl-jax, naming the data_dir."""
  from mtl_jax import ablation  # pylint: disable=g-import-not-at-top
  from mtl_jax.config import loader  # pylint: disable=g-import-not-at-top
  exe = '.venv/bin/mtl-jax' if args.mtl_jax == 'mtl-jax' else args.mtl_jax
  lines = []
  for item in todo:
    config = loader.load_config(f'{plan["config"]}:{plan["arms"][item.arm]}',
                                ablation.overrides(plan, item, extra))
    data = {**extra, 'data.data_dir': config.data.data_dir}
    commands = ablation.commands(plan, item, exe, args.launcher, data)
    lines.append(' && '.join(shlex.join(c) for c in commands))
  return lines


if __name__ == '__main__':
  sys.exit(main())
