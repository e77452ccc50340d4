"""Validation curves of several runs: one PNG, and a Markdown table of the last evaluation.

  python bench/validation_curves.py runs/real_cpu_e runs/real_cpu_f --out bench/curves.png

Reads each WORKDIR's validation history (`mtl_jax.history`: the JSONL file,
or the scalar lines of mtl-jax.log for runs that predate it). A label may be
given as LABEL=WORKDIR.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from mtl_jax import history  # noqa: E402

METRICS = (
    ('MedSeg Dice (pooled)', 'validation/dice'),
    ('UCSD AUC', 'validation/by_source/covid_ct/auc_covid'),
    ('MosMed AUC', 'validation/by_source/mosmed/auc_covid'),
    ('SARS-CoV-2 AUC', 'validation/by_source/sars_cov2_ct/auc_covid'),
    ('pooled COVID AUC', 'validation/auc_covid'),
    ('reconstruction MSE', 'validation/recon_mse'),
)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('runs', nargs='+', help='WORKDIR or LABEL=WORKDIR')
  parser.add_argument('--out', default='bench/validation_curves.png')
  args = parser.parse_args(argv)
  runs = {}
  for item in args.runs:
    label, _, workdir = item.rpartition('=')
    runs[label or os.path.basename(os.path.normpath(workdir))] = history.read(workdir)
  fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
  for ax, (title, key) in zip(axes.flat, METRICS):
    for label, rows in runs.items():
      points = [(step, row[key]) for step, row in rows.items() if key in row]
      if points:
        ax.plot(*zip(*points), marker='.', label=label)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  axes.flat[0].legend(fontsize=8)
  fig.savefig(args.out, dpi=90)
  print(f'wrote {args.out}\n')
  print('| run | last step | ' + ' | '.join(t for t, _ in METRICS) + ' |')
  print('|---' * (len(METRICS) + 2) + '|')
  for label, rows in runs.items():
    if not rows:
      print(f'| {label} | (no evaluation yet) |')
      continue
    step = max(rows)
    cells = [f'{rows[step][k]:.3f}' if k in rows[step] else '-' for _, k in METRICS]
    print(f'| {label} | {step} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
