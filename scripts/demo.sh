#!/usr/bin/env bash
# The main job on an embedded default, one key frame through the compute
# core: the built-in teacher (config/teacher-small.json: untrained weights,
# so its labels only show the pipeline working) labels a 360x640 frame; the
# student distils on that label map and its loss weights for 8 Adam steps
# (partial distillation), is saved, runs inference with the distilled
# weights, and is benchmarked at 360x640.
# (The server/client issues replace this with the end-to-end video demo.)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
build_dir=${ST_BUILD_DIR:-build}
tool="$build_dir/shadowtutor-model"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
frame=tests/fixtures/teacher_small_ref.safetensors

echo "== teacher: label map and loss weights for a 360x640 key frame"
"$tool" teacher --config config/teacher-small.json --input "$frame" \
  --out "$work/teacher.safetensors"

echo "== student: partial distillation on the teacher's label (8 Adam steps)"
"$tool" distill --config config/student.json \
  --weights tests/fixtures/student_weights.safetensors \
  --input "$frame" --labels "$work/teacher.safetensors" \
  --steps 8 --out "$work/distilled.safetensors"

echo "== student: inference with the distilled weights"
"$tool" forward --config config/student.json \
  --weights "$work/distilled.safetensors" --input "$frame" \
  --out "$work/logits.safetensors"
ls -l "$work/logits.safetensors"

echo "== speed at 360x640"
"$tool" bench --config config/student.json --height 360 --width 640 --iters 3
