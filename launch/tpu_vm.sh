#!/usr/bin/env bash
# Create a Cloud TPU VM (or a queued resource), install mtl-jax on every worker
# from requirements-tpu.lock under Python 3.12, build the datasets if asked,
# train on all workers (jax.distributed finds the TPU topology itself), then
# evaluate. The VM is kept for more runs (launch/sweep.py's TPU loop) unless
# --delete is given; a rerun with the same --name reuses it.
#
#   launch/tpu_vm.sh --name mtl --zone us-central2-b --type v4-32 \
#       --workdir gs://BUCKET/runs/v4 --data_dir gs://BUCKET/data \
#       [--repo_url URL] [--ref REF] [--config configs/tpu.py] \
#       [--build_data 'NAME [BUILD-DATA ARGS]']... [--split test] \
#       [--version tpu-ubuntu2204-base] [--queued] [--delete] [--dry_run] \
#       [-- --config.KEY=VALUE ...]
#
# --workdir    checkpoints and logs, a path every worker writes (gs://).
# --data_dir   where every worker reads the TFDS datasets (a gs:// bucket, or
#              any path all workers see); passed as --config.data.data_dir.
# --build_data runs `mtl-jax build-data NAME ARGS --data_dir DATA_DIR` on
#              worker 0 before training (repeatable; ARGS split as shell words).
#              Leave it out once the datasets are built.
# --repo_url   a git URL every worker can clone (default: this clone's origin,
#              when it is a URL rather than a local path).
# --ref        the commit, branch or tag the workers run (default: this
#              checkout's commit, which must be pushed to --repo_url).
# --version    the TPU software image. tpu-ubuntu2204-base has Python 3.10 only:
#              a worker uses python3.12 where it has one, else installs 3.12
#              with uv (pip install --user uv; uv python install 3.12).
# --accel      the lock the workers install: tpu (default) or cpu; cpu is for
#              tests/test_tpu_vm_script.py, which runs this script against a
#              fake gcloud on a machine without TPUs.
# --delete     delete the VM at the end, also after a failure or Ctrl-C.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME=mtl-jax; ZONE=us-central2-b; TYPE=v4-32; VERSION=tpu-ubuntu2204-base
CONFIG=configs/tpu.py; WORKDIR=""; DATA_DIR=""; REPO_URL=""; REF=""; SPLIT="test"
ACCEL=tpu; QUEUED=0; DRY=0; DELETE=0; BUILD=()
while [[ $# -gt 0 ]]; do
  case "$1" in --queued|--dry_run|--delete|-h|--help|--) ;;
    *) [[ $# -ge 2 ]] || die "$1 needs a value" ;; esac
  case "$1" in
    --name) NAME="$2"; shift 2 ;;         --zone) ZONE="$2"; shift 2 ;;
    --type) TYPE="$2"; shift 2 ;;         --version) VERSION="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;     --workdir) WORKDIR="$2"; shift 2 ;;
    --data_dir) DATA_DIR="$2"; shift 2 ;; --build_data) BUILD+=("$2"); shift 2 ;;
    --repo_url) REPO_URL="$2"; shift 2 ;; --ref) REF="$2"; shift 2 ;;
    --split) SPLIT="$2"; shift 2 ;;       --accel) ACCEL="$2"; shift 2 ;;
    --queued) QUEUED=1; shift ;;          --dry_run) DRY=1; shift ;;
    --delete) DELETE=1; shift ;;          -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "tpu_vm.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n $WORKDIR ]] || die "--workdir is required (a gs:// path every worker can write)"
[[ -n $DATA_DIR ]] || die "--data_dir is required (where every worker reads the datasets, e.g. gs://BUCKET/data)"
case $ACCEL in
  tpu) LOCK=requirements-tpu.lock ;;
  cpu) LOCK=requirements.lock ;;
  *) die "--accel $ACCEL: tpu or cpu" ;;
esac
if [[ -z $REPO_URL ]]; then
  REPO_URL="$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)"
  [[ $REPO_URL == *://* || $REPO_URL =~ ^[^/]+@[^/]+: ]] || die "--repo_url is required:" \
      "this clone's origin (${REPO_URL:-none}) is not a URL the TPU workers can clone"
fi
if [[ -z $REF ]]; then
  REF="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null)" || die "--ref is required (no git checkout here)"
fi

q() { printf '%q' "$1"; }
run() { if [[ $DRY == 1 ]]; then echo "+ $*"; else "$@"; fi; }
# One command on the workers (all, or one), in a bash with -e and pipefail.
on() { run gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker="$1" \
         --command "set -eo pipefail; $2"; }

if [[ $DRY == 0 ]] && gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" \
    >/dev/null 2>&1; then
  echo "tpu_vm.sh: reusing the TPU VM $NAME in $ZONE"
elif [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" \
      --accelerator-type "$TYPE" --runtime-version "$VERSION"
  [[ $DRY == 1 ]] || until gcloud compute tpus queued-resources describe "$NAME" --zone "$ZONE" \
      --format='value(state.state)' | grep -q ACTIVE; do sleep 30; done
else
  run gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
      --version "$VERSION"
fi
finish() {
  local status=$?
  if [[ $DELETE == 1 ]]; then
    run gcloud compute tpus tpu-vm delete "$NAME" --zone "$ZONE" --quiet
  else
    echo "tpu_vm.sh: kept the TPU VM $NAME (zone $ZONE): rerun this script or run" \
         "the TPU loop of launch/sweep.py --dry_run --mtl_jax .venv/bin/mtl-jax with" \
         "NAME=$NAME ZONE=$ZONE; delete it with" \
         "gcloud compute tpus tpu-vm delete $NAME --zone $ZONE"
  fi
  exit "$status"
}
trap finish EXIT

# Install: the code at REF, Python 3.12, .venv from the lock (a no-op when done).
on all "if [ -d mtl-jax/.git ]; then git -C mtl-jax fetch -q --tags origin; \
else git clone -q $(q "$REPO_URL") mtl-jax; fi; cd mtl-jax; \
git checkout -q --detach $(q "origin/$REF") 2>/dev/null || git checkout -q --detach $(q "$REF"); \
PY=\$(command -v python3.12 || true); \
if [ -z \"\$PY\" ]; then python3 -m pip install -q --user uv; \
~/.local/bin/uv python install 3.12; PY=\$(~/.local/bin/uv python find 3.12); fi; \
[ -x .venv/bin/python ] || \"\$PY\" -m venv .venv; \
.venv/bin/python -m pip install -q --upgrade pip; \
.venv/bin/python -m pip install -q -r $LOCK; \
.venv/bin/python -m pip install -q --no-deps -e .; \
echo \"\$(hostname): mtl-jax \$(git rev-parse --short HEAD), \$(.venv/bin/python --version)\""

for spec in "${BUILD[@]}"; do  # $spec is split on the worker: NAME and its options
  on 0 "cd mtl-jax && .venv/bin/mtl-jax build-data $spec --data_dir $(q "$DATA_DIR")"
done

overrides=""
for arg in "$@"; do overrides+=" $(q "$arg")"; done
on all "cd mtl-jax && .venv/bin/mtl-jax train --config $(q "$CONFIG") \
--workdir $(q "$WORKDIR") --config.data.data_dir=$(q "$DATA_DIR")$overrides 2>&1 | tee -a train.log"
on all "cd mtl-jax && .venv/bin/mtl-jax evaluate --workdir $(q "$WORKDIR") \
--split $(q "$SPLIT") 2>&1 | tee -a evaluate.log"
