#!/usr/bin/env bash
# The GPU checks, as one prepared run for a machine with an NVIDIA GPU:
# build with CUDA (unless --build-dir names a finished build), run every
# test binary (their cuda/ cases run against the CPU's PyTorch fixtures),
# run `shadowtutor-model bench --backend cuda` at 720x1280 and, when
# PyTorch with CUDA is present, the same work in PyTorch, and print ratios.
# Results (logs, JSON, summary) go to --out DIR.
#
#   scripts/gpu-check.sh --out DIR [--build-dir DIR] [--iters N]
#                        [--height H --width W] [--libs DIR] [--ref DIR]
#
# --libs DIR   extra shared libraries (e.g. libdnnl, libjansson carried to a
#              machine whose image lacks them), a folder or a .tar.xz made
#              by scripts/gpu-pack.sh; prepended to LD_LIBRARY_PATH
# --ref DIR    folder holding shadowtutor_ref.py for the PyTorch side
#              (default ../shared/reference beside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

out= build_dir= iters=20 height=720 width=1280 libs= ref=
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --height) height=$2; shift 2 ;;
    --width) width=$2; shift 2 ;;
    --libs) libs=$2; shift 2 ;;
    --ref) ref=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "gpu-check: --out DIR is required" >&2; exit 2; }
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

say "== gpu-check $(date -u +%FT%TZ)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$summary"
else
  say "nvidia-smi not found"
fi

# Libraries: carried ones first (a folder, or an archive made by
# scripts/gpu-pack.sh), then cuDNN/cuBLAS from the CUDA Python wheels when
# the system has none of its own.
if [ -n "$libs" ] && [ -f "$libs" ]; then
  unpacked=$(mktemp -d)
  tar -C "$unpacked" -xJf "$libs"
  libs=$unpacked
fi
lib_path=${libs:+$(cd "$libs" && pwd)}
if ! ldconfig -p 2>/dev/null | grep -q 'libcudnn\.so\.9'; then
  for mod in nvidia.cudnn nvidia.cublas nvidia.cuda_runtime; do
    d=$(python3 -c "import $mod, os; print(os.path.join(list($mod.__path__)[0], 'lib'))" 2>/dev/null || true)
    [ -n "$d" ] && [ -d "$d" ] && lib_path=${lib_path:+$lib_path:}$d
  done
fi
export LD_LIBRARY_PATH=${lib_path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

if [ -z "$build_dir" ]; then
  build_dir=build-gpu
  say "== building with CUDA into $build_dir"
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DST_CUDA=ON >"$out/build.log" 2>&1
  cmake --build "$build_dir" -j "$(nproc)" >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
fi
tool="$build_dir/shadowtutor-model"
[ -x "$tool" ] || { echo "gpu-check: $tool is missing" >&2; exit 1; }

say "== tests (every backend; cuda/ cases compare with the fixtures)"
export ST_FIXTURE_DIR="$root/tests/fixtures" ST_MODEL_TOOL="$root/$tool"
failed=0
for t in "$build_dir"/tests/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  if timeout 150 "$t" >"$out/$name.log" 2>&1; then status=ok; else status=FAILED; failed=1; fi
  cuda_ok=$(grep -c '^\[       OK \] cuda/' "$out/$name.log" || true)
  cuda_skip=$(grep -c '^\[  SKIPPED \] cuda/' "$out/$name.log" || true)
  cuda_fail=$(grep -c '^\[  FAILED  \] cuda/' "$out/$name.log" || true)
  say "$(printf '%-18s %-7s cuda: %3s passed %3s failed %3s skipped' "$name" "$status" "$cuda_ok" "$((cuda_fail / 2))" "$((cuda_skip / 2))")"
done
# A single log for reading back.
cat "$out"/test_*.log > "$out/tests.log" 2>/dev/null || true
rm -f "$out"/test_*.log

say "== server on the GPU (backend cuda, one worker = one stream pair)"
server="$build_dir/shadowtutor-server"
if [ -x "$server" ] && [ -x "$build_dir/tests/test_server" ]; then
  if ST_TEST_BACKEND=cuda timeout 150 "$build_dir/tests/test_server" >"$out/server_cuda.log" 2>&1; then
    say "test_server (cuda): ok"
  else
    say "test_server (cuda): FAILED (see server_cuda.log)"; failed=1
  fi
  if python3 -c 'import msgpack, numpy' 2>/dev/null; then
    ST_TEST_BACKEND=cuda timeout 200 python3 tests/integration/server_test.py --server "$server" \
      --config-dir config >"$out/server_py_cuda.log" 2>&1 && say "server_test.py (cuda): ok" ||
      { say "server_test.py (cuda): FAILED"; failed=1; }
    timeout 120 python3 bench/server_latency.py --server "$server" --backend cuda --keyframes 6 \
      | tee "$out/server_latency_cuda.txt" | tee -a "$summary" || true
  else
    say "server_test.py / server_latency.py: skipped (python3 msgpack or numpy missing)"
  fi
else
  say "server: skipped ($server or tests/test_server missing)"
fi

say "== clients per GPU: stride 8, 30 FPS, 720p JPEG key frames, p99 update latency < 267 ms"
loadgen="$build_dir/shadowtutor-loadgen"
clip_tool="$build_dir/client/shadowtutor-clip"
if [ -x "$server" ] && [ -x "$loadgen" ] && [ -x "$clip_tool" ]; then
  "$clip_tool" make "$out/clip720.mkv" --size 1280x720 --frames 32 --codec mjpeg >/dev/null
  port=$((20000 + RANDOM % 20000))
  cat >"$out/server_sweep.json" <<JSON
{"listen": {"host": "127.0.0.1", "port": $port}, "metrics": {"host": "127.0.0.1", "port": 0},
 "backend": "cuda", "workers": ${ST_SWEEP_WORKERS:-4}, "threads_per_worker": 1,
 "teacher": "$root/config/teacher-small.json",
 "student": {"config": "$root/config/student.json", "weights": null},
 "distill": {"bootstrap_full_keyframes": 0}, "log_level": "warn"}
JSON
  "$server" --config "$out/server_sweep.json" 2>"$out/server_sweep.log" &
  sweep_pid=$!
  sleep 5
  timeout 200 "$loadgen" --server "127.0.0.1:$port" --input "$out/clip720.mkv" --fps 30 \
    --stride-policy fixed:8 --concurrency-sweep 1,4,16,32,64,128 --duration 8 --drain 5 \
    --json "$out/sweep.json" >"$out/sweep.txt" 2>&1 || say "loadgen sweep: FAILED (see sweep.txt)"
  kill -TERM "$sweep_pid" 2>/dev/null || true; wait "$sweep_pid" 2>/dev/null || true
  rm -f "$out/clip720.mkv"
  [ -f "$out/sweep.json" ] && python3 - "$out/sweep.json" <<'PY' | tee -a "$summary"
import json, sys
r = json.load(open(sys.argv[1]))
best = 0
for ph in r["phases"]:
    p99 = ph["latency_ms"]["p99"]
    ok = ph["dropped"] == 0 and p99 < 267
    print(f"clients {ph['clients']:4d}: {ph['answers_per_s']:8.1f} updates/s, "
          f"p50 {ph['latency_ms']['p50']:7.1f} ms, p99 {p99:7.1f} ms, "
          f"dropped {ph['dropped']}  {'ok' if ok else 'over'}")
    if ok:
        best = max(best, ph["clients"])
print(f"clients served per GPU (largest step with p99 < 267 ms, nothing dropped): {best}")
PY
else
  say "clients per GPU: skipped (server, loadgen or shadowtutor-clip missing)"
fi

say "== benchmark ${height}x${width}, $iters iterations"
bench_args=(--config config/student.json --height "$height" --width "$width" --iters "$iters")
# cuDNN's heuristic (the default) and the exhaustive search (what PyTorch
# does with cudnn.benchmark, its setting in the comparison below).
# A failed run is reported and the others still run (set -e would stop
# the whole check at the first one).
bench() {
  local file=$1; shift
  "$tool" bench --backend cuda "$@" "${bench_args[@]}" | tee "$out/$file" | tee -a "$summary" ||
    { say "bench ${*:-(heuristic)}: FAILED (see $file)"; failed=1; }
}
bench bench_cuda.txt
bench bench_cuda_exhaustive.txt --conv-search exhaustive
bench bench_cuda_full.txt --conv-search exhaustive --full
# The same without CUDA graphs: what the recordings save.
bench bench_cuda_exhaustive_nographs.txt --conv-search exhaustive --no-graphs

torch_ok=$(python3 -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
if [ "$torch_ok" = 1 ]; then
  ref=${ref:-$root/../shared/reference}
  export ST_REF_DIR=$ref
  # PyTorch's default (cuDNN heuristic) and cudnn.benchmark (search).
  for mode in infer distill; do
    python3 bench/torch_student_bench.py "$mode" --device cuda --height "$height" --width "$width" --iters "$iters" \
      | tee "$out/torch_$mode.txt" | tee -a "$summary" || say "PyTorch $mode: FAILED"
    python3 bench/torch_student_bench.py "$mode" --device cuda --cudnn-benchmark --height "$height" --width "$width" --iters "$iters" \
      | tee "$out/torch_${mode}_benchmark.txt" | tee -a "$summary" || say "PyTorch $mode (cudnn.benchmark): FAILED"
  done
  python3 - "$out" <<'PY' | tee -a "$summary" || say "ratios: not computed (a run above failed)"
import json, sys
out = sys.argv[1]
def last_json(path):
    lines = [l for l in open(path) if l.startswith('{')]
    return json.loads(lines[-1])
# Like with like: our heuristic against PyTorch's default, our exhaustive
# search against cudnn.benchmark.
rows = []
for search, c_file, t_suffix in (('heuristic', 'bench_cuda.txt', ''),
                                 ('exhaustive', 'bench_cuda_exhaustive.txt', '_benchmark')):
    c = last_json(f'{out}/{c_file}')
    ti = last_json(f'{out}/torch_infer{t_suffix}.txt')
    td = last_json(f'{out}/torch_distill{t_suffix}.txt')
    rows += [(f'inference ms ({search})', c['infer_ms_median'], ti['infer_ms_median'],
              'C <= 3 ms on H100-class'),
             (f'distill step ms ({search})', c['distill_step_ms_median'],
              td['distill_step_ms_median'], 'ratio <= 0.7 and C <= 13 ms'),
             # The same step recomputing the frozen modules, as PyTorch does.
             (f'  frozen recomputed ({search})', c['distill_step_recompute_ms_median'],
              td['distill_step_ms_median'], 'like-for-like work')]
ng = last_json(f'{out}/bench_cuda_exhaustive_nographs.txt')
tib = last_json(f'{out}/torch_infer_benchmark.txt')
tdb = last_json(f'{out}/torch_distill_benchmark.txt')
rows += [('inference ms (exh., no graphs)', ng['infer_ms_median'],
          tib['infer_ms_median'], 'what graphs save'),
         ('distill step ms (exh., no graphs)', ng['distill_step_ms_median'],
          tdb['distill_step_ms_median'], 'what graphs save')]
print(f"{'metric':34} {'C':>9} {'PyTorch':>9} {'C/PyTorch':>10}  target")
for name, cv, tv, target in rows:
    print(f"{name:34} {cv:9.3f} {tv:9.3f} {cv / tv:10.2f}  {target}")
PY
else
  say "PyTorch with CUDA not present: no PyTorch comparison"
fi
if [ "$failed" = 1 ]; then say "== some checks FAILED (logs in $out)"; exit 1; fi
say "== all checks passed"
