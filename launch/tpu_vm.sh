#!/usr/bin/env bash
# Create a Cloud TPU VM (or a queued resource), install mtl-jax on every worker,
# train on all workers (jax.distributed auto-detects the TPU topology), follow
# the logs, and delete the VM at the end (also on failure or Ctrl-C).
#
#   launch/tpu_vm.sh --name mtl --zone us-central2-b --type v4-32 \
#       --workdir gs://BUCKET/runs/v4 [--queued] [--dry_run] [-- --config.KEY=VALUE ...]
#
# Data: build the TFDS datasets once into gs://BUCKET/data and pass
# --config.data.data_dir=gs://BUCKET/data. Checkpoints go to the gs:// workdir
# (orbax writes and restores gs:// paths from every worker).
set -euo pipefail
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
NAME=mtl-jax; ZONE=us-central2-b; TYPE=v4-32; VERSION=tpu-ubuntu2204-base
CONFIG=configs/tpu.py; WORKDIR=""; QUEUED=0; DRY=0; REPO_URL="${REPO_URL:-$(git config --get remote.origin.url || echo .)}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;   --zone) ZONE="$2"; shift 2 ;;
    --type) TYPE="$2"; shift 2 ;;   --version) VERSION="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;; --workdir) WORKDIR="$2"; shift 2 ;;
    --queued) QUEUED=1; shift ;;    --dry_run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;     --) shift; break ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n "$WORKDIR" ]] || { echo "--workdir is required (a gs:// path)" >&2; exit 2; }
run() { if [[ $DRY == 1 ]]; then echo "+ $*"; else "$@"; fi; }
ssh_all() { run gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"; }

if [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" \
      --accelerator-type "$TYPE" --runtime-version "$VERSION"
  [[ $DRY == 1 ]] || until gcloud compute tpus queued-resources describe "$NAME" --zone "$ZONE" \
      --format='value(state.state)' | grep -q ACTIVE; do sleep 30; done
else
  run gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
      --version "$VERSION"
fi
cleanup() { run gcloud compute tpus tpu-vm delete "$NAME" --zone "$ZONE" --quiet; }
trap cleanup EXIT
ssh_all "git clone $REPO_URL mtl-jax || (cd mtl-jax && git pull); cd mtl-jax && \
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'"
ssh_all "cd mtl-jax && .venv/bin/mtl-jax train --config $CONFIG --workdir $WORKDIR $* \
  2>&1 | tee -a train.log"
