#!/bin/bash
# The project's own queue of long runs for issues 13 and 14 (docs/experiments.md,
# "Where the long runs stand"), on this repository's 2-core VM:
#   nohup bench/long_runs.sh > runs/long_runs.log 2>&1 &
# Re-entrant across sessions whose scratch (.venv, data/, runs/) is wiped:
# it sets up and builds the data if missing, every finished run's results are
# kept in bench/plans/ (commit them) and relinked from there, so each call
# carries on with the first run not yet kept. A run cut by a session's stop
# restarts from scratch in the next (its checkpoints were in runs/), so the
# order puts short, paired runs first.
set -u
cd "$(dirname "$0")/.."
# Where the public releases are (the builders' setting; beside the checkout here).
export MTL_MANUAL_DIR="${MTL_MANUAL_DIR:-$(cd .. && pwd)/shared/data}"
M=.venv/bin/mtl-jax
[ -x "$M" ] || make setup
for d in medseg_covid covid_ct mosmed sars_cov2_ct china_negative; do
  [ -d "data/$d/128" ] || "$M" build-data "$d" --data_dir data --image_size 128
done
[ -d data/covid19_ct_seg/128 ] || "$M" build-data covid19_ct_seg --data_dir data --image_size 128 --use_pseudo_masks
sweep() { .venv/bin/python launch/sweep.py --mtl_jax "$M" "$@"; }
# Issue 14: the ablation, 3 seeds (a sweep with several arms needs the baseline, full, among them).
A="--plan configs/ablation.py --root runs/ablation --reuse_from bench/plans/ablation --keep_results bench/plans/ablation"
sweep $A --seeds 1 --arms full,seg_only,cls_only,no_recon,uncertainty
sweep $A --seeds 2 --arms full,seg_only,cls_only
sweep $A --seeds 1 --arms full,no_unlabelled
sweep $A --seeds 2 --arms full,no_recon,no_unlabelled,uncertainty
# Issue 14: the ranking at the recipe's own length (3000 steps), cls_only first.
LC="--plan configs/ablation.py:length_check --root runs/ablation_length --reuse_from runs/quality --reuse_from bench/plans/quality --keep_results bench/plans/ablation_length"
sweep $LC --arms full,cls_only
# Issue 13: the recipe's 5-fold cross-validated Dice (one fold ~1-2 h: best started first in a session).
.venv/bin/python bench/cross_validate.py --root runs/cv --config configs/real.py:cpu --keep_results bench/plans/cv
sweep $LC --arms seg_only
Q="--plan configs/quality.py --root runs/quality --reuse_from bench/plans/quality --keep_results bench/plans/quality"
sweep $Q --arms seg_heavy
sweep $Q --arms normal_weak
sweep $Q --arms finetune_256,finetune_128 --baseline finetune_128
