#!/usr/bin/env bash
# Download, here, the wheels that bench/device_check.sh installs on the lent
# GPU machine, which has jax, jaxlib (CUDA plugin), flax, optax and
# orbax-checkpoint with their dependencies (numpy, scipy, absl-py, etils,
# protobuf, tensorstore, ...) but no package index. The list is what mtl_jax's
# train, evaluate and predict paths and bench/predict_volume.py import beyond
# those, at the versions of requirements.lock (mtl-jax itself goes on
# PYTHONPATH from the repo).
#   bash bench/fetch_device_wheels.sh [--dry-run]
# --dry-run prints each NAME==VERSION and the pip command, and downloads nothing.
# Wheels go to .whl/, which ignores itself (.whl/.gitignore: '*'), so git never
# commits them; the device tool carries an ignored path only when named:
#   run(command='bash bench/device_check.sh', carry=['.whl'])
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0; [[ ${1:-} == --dry-run ]] && DRY=1
NAMES=(ml_collections grain array_record cloudpickle clu tensorboardX tensorflow-datasets
       tensorflow-metadata googleapis-common-protos immutabledict toml tqdm wrapt
       requests urllib3 idna certifi charset-normalizer attrs packaging six portpicker
       nibabel pydicom pillow)
SDIST_ONLY=(promise)  # no wheel on the index: built here into a pure-Python one
pins=(); built=()
for name in "${NAMES[@]}" "${SDIST_ONLY[@]}"; do
  pin=$(grep -i -m1 -E "^${name//[-_]/[-_]}==" requirements.lock | sed 's/[ ;].*//') \
    || { echo "fetch_device_wheels: $name is not in requirements.lock" >&2; exit 2; }
  if [[ " ${SDIST_ONLY[*]} " == *" $name "* ]]; then built+=("$pin"); else pins+=("$pin"); fi
done
cmd=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
     --platform manylinux1_x86_64 -d .whl "${pins[@]}")
build=(python3 -m pip wheel -q --no-deps --no-binary=:all: -w .whl "${built[@]}")
if ((DRY)); then
  printf '%s\n' "${pins[@]}" "${built[@]}"
  printf '%q ' "${cmd[@]}"; echo
  printf '%q ' "${build[@]}"; echo
  exit 0
fi
mkdir -p .whl && echo '*' > .whl/.gitignore  # git ignores .whl/ (no clone-wide exclude)
"${cmd[@]}"
"${build[@]}"
du -sh .whl
