#!/usr/bin/env bash
# The paper's table on real video: ShadowTutor's accuracy (mIoU of the
# student against the teacher on every frame), bandwidth and speed, per
# variant (full/partial distillation, f32/f16/f16-delta updates, raw/JPEG
# key frames), against naive offloading of every frame. Writes
# eval/<video>/report.md, report.json and plots/*.png (gnuplot).
#
#   bench/eval.sh [VIDEO...] [--size WxH] [--frames N] [--variants A,B,...]
#                 [--server-config F] [--client-config F] [--weights F]
#                 [--out DIR] [--offload-seconds S] [--no-offload]
#                 [--pretrain VIDEOS|none] [--pretrain-size WxH]
#
# Default video: samples/vtest.avi (scripts/fetch-samples.sh); the base
# student is pretrained on another clip, samples/Megamind.avi, as the paper
# starts from a pretrained student (--pretrain none: random weights, the
# server bootstraps). Default
# variants: partial-f16-delta-jpeg, partial-f32-raw, partial-f32-jpeg,
# partial-f16-jpeg, partial-f16-delta-raw, full-f16-delta-jpeg. The work is
# done by bench/eval.py (Python standard library); it never runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ST_EVAL_NO_SETUP:-}" ]; then
  ./scripts/setup.sh >/dev/null
  ./scripts/build.sh >/dev/null
  ./scripts/fetch-samples.sh vtest.avi Megamind.avi >/dev/null
fi
exec /usr/bin/python3 bench/eval.py "$@"
