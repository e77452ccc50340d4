#!/usr/bin/env bash
# Run N CPU processes on 127.0.0.1 as one multi-host JAX job (for testing the
# multi-host path without a cluster). Each process simulates D CPU devices.
#
#   launch/local_cluster.sh [-n 2] [-d 4] [-p 12355] [--dry_run] -- mtl-jax train --config ... --workdir ...
#
# Logs go to $LOG_DIR/process_<i>.log (default: ./runs/local_cluster_logs).
# Exits non-zero if any process fails; the others are then stopped.
set -euo pipefail
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
N=2; D=4; PORT=12355; DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    -d) D="$2"; shift 2 ;;
    -p) PORT="$2"; shift 2 ;;
    --dry_run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "no command given after --" >&2; usage >&2; exit 2; }
LOG_DIR="${LOG_DIR:-runs/local_cluster_logs}"
pids=()
for ((i = 0; i < N; i++)); do
  cmd=("$@" --coordinator_address "127.0.0.1:$PORT" --num_processes "$N" --process_id "$i")
  env_prefix="JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$D"
  if [[ $DRY == 1 ]]; then
    echo "$env_prefix ${cmd[*]} > $LOG_DIR/process_$i.log 2>&1 &"
    continue
  fi
  mkdir -p "$LOG_DIR"
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$D" \
    "${cmd[@]}" > "$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
[[ $DRY == 1 ]] && exit 0
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $LOG_DIR/process_$i.log" >&2
    status=1
    kill "${pids[@]}" 2>/dev/null || true
  fi
done
exit $status
