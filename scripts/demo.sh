#!/usr/bin/env bash
# The main job on an embedded default: a student distils on a sample key
# frame (image, teacher label map, loss weights) for 8 Adam steps, is saved,
# runs inference with the distilled weights, and is benchmarked at 360x640.
# (The server/client issues replace this with the end-to-end video demo.)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
build_dir=${ST_BUILD_DIR:-build}
tool="$build_dir/shadowtutor-model"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sample=tests/fixtures/student_45x83.safetensors

echo "== distil the reference student on a 45x83 sample key frame (8 Adam steps)"
"$tool" distill --config config/student.json \
  --weights tests/fixtures/student_weights.safetensors \
  --input "$sample" --steps 8 --out "$work/distilled.safetensors"

echo "== inference with the distilled student"
"$tool" forward --config config/student.json \
  --weights "$work/distilled.safetensors" --input "$sample" \
  --out "$work/logits.safetensors"
ls -l "$work/logits.safetensors"

echo "== speed at 360x640"
"$tool" bench --config config/student.json --height 360 --width 640 --iters 3
