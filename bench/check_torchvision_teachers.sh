#!/usr/bin/env bash
# Runs real torchvision segmentation models through the C ONNX executor and
# compares their logits with PyTorch's (issue 4: "a test, skipped when
# PyTorch is absent, run by the benchmark script").
#
#   bench/check_torchvision_teachers.sh [--height 360 --width 640] [MODEL...]
#
# MODEL defaults to lraspp_mobilenet_v3_large, deeplabv3_mobilenet_v3_large
# and fcn_resnet50. Each is exported with random (seeded, BN-calibrated)
# weights by scripts/export-teacher.py into models/MODEL-HxW.onnx unless that
# file is already there (fcn_resnet50 takes about a minute and 130 MB), then
# one random U8 image is labelled by `shadowtutor-model teacher --model`
# (RGB / 255, no mean or std) and bench/torch_teacher_bench.py compare runs
# the same model in PyTorch on the same input: PASS when the largest
# difference is within 1e-4 of the largest PyTorch logit magnitude.
#
# Exit status: 0 when every model passes, 1 when one fails or cannot run,
# 2 on a usage error, 77 (the automake/ctest "skipped" code) when the
# PyTorch Python cannot import torch and torchvision.
#
# Environment: ST_BUILD_DIR (default build) holds shadowtutor-model, built
# with scripts/build.sh if absent; ST_TORCH_PYTHON (default /usr/bin/python3)
# is the Python with torch; ST_THREADS (default 2) the threads of both sides.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

readonly EXIT_SKIP=77
readonly TORCH_PYTHON=${ST_TORCH_PYTHON:-/usr/bin/python3}
readonly DEFAULT_MODELS=(lraspp_mobilenet_v3_large deeplabv3_mobilenet_v3_large fcn_resnet50)
threads=${ST_THREADS:-2}
height=360 width=640
models=()
is_positive_int() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
while (($#)); do
  case $1 in
    --height | --width)
      if (($# < 2)) || ! is_positive_int "$2"; then
        echo "check_torchvision_teachers: $1 expects a positive integer" >&2
        exit 2
      fi
      declare "${1#--}=$2"
      shift 2
      ;;
    -h | --help) sed -n '5p' "$0" | sed 's/^# //'; exit 0 ;;
    -*) echo "check_torchvision_teachers: unknown argument '$1'" >&2; exit 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
((${#models[@]})) || models=("${DEFAULT_MODELS[@]}")

if ! "$TORCH_PYTHON" -c 'import torch, torchvision, onnx, numpy' 2>/dev/null; then
  echo "check_torchvision_teachers: SKIP: $TORCH_PYTHON cannot import torch," \
    "torchvision, onnx and numpy (apt-get install python3-torch" \
    "python3-torchvision python3-onnx python3-numpy)" >&2
  exit "$EXIT_SKIP"
fi

build_dir=${ST_BUILD_DIR:-build}
tool=$build_dir/shadowtutor-model
if [[ ! -x $tool ]]; then
  echo "building $tool (Release) with scripts/build.sh ..." >&2
  ST_BUILD_DIR=$build_dir ST_BUILD_TYPE=Release ./scripts/build.sh >&2
else
  cmake --build "$build_dir" --target shadowtutor-model -j "$(nproc)" >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=$threads
torch_bench=("$TORCH_PYTHON" bench/torch_teacher_bench.py)
"${torch_bench[@]}" image --height "$height" --width "$width" --out "$tmp/in.safetensors"

failed=0
for m in "${models[@]}"; do
  onnx=models/$m-${height}x$width.onnx
  if [[ ! -f $onnx ]]; then
    echo "exporting $onnx ..."
    if ! "$TORCH_PYTHON" scripts/export-teacher.py --model "$m" --height "$height" \
      --width "$width" --out "$onnx" >"$tmp/export.log" 2>&1; then
      grep -v Warning "$tmp/export.log" >&2 || true
      echo "FAIL $m: export failed" && failed=1 && continue
    fi
  fi
  if ! "$tool" teacher --model "$onnx" --input "$tmp/in.safetensors" \
    --out "$tmp/$m.safetensors" --threads "$threads"; then
    echo "FAIL $m: shadowtutor-model teacher could not run it"
    failed=1
    continue
  fi
  "${torch_bench[@]}" compare --model "$m" --image "$tmp/in.safetensors" \
    --logits "$tmp/$m.safetensors" --threads "$threads" 2>"$tmp/compare.err" ||
    { grep -v Warning "$tmp/compare.err" >&2 || true; failed=1; }
done
exit "$failed"
