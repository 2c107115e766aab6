#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input with libFuzzer (clang): safetensors
# files, ONNX models, the student/teacher JSON configs, and protocol v1
# message bodies. Builds into build-fuzz (CPU only), seeds each target from
# the committed fixtures, and runs each for SECONDS (default 60). A crash
# leaves its input in build-fuzz/artifacts/ and fails the script.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   targets: safetensors onnx configs proto
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(safetensors onnx configs proto)
command -v clang >/dev/null || { echo "fuzz: clang is required (apt-get install clang)" >&2; exit 2; }
build=build-fuzz
CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DST_FUZZ=ON -DST_CUDA=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target $(printf 'fuzz_%s ' "${targets[@]}") >/dev/null
mkdir -p "$build/artifacts"
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  mkdir -p "$corpus"
  case $t in
    safetensors) cp tests/fixtures/*.safetensors "$corpus/" 2>/dev/null || true ;;
    onnx) cp tests/fixtures/*.onnx "$corpus/" 2>/dev/null || true ;;
    configs) cp config/*.json "$corpus/" ;;
    proto) cp tests/fixtures/proto/*.bin "$corpus/" ;;
    *) echo "fuzz: unknown target $t" >&2; exit 2 ;;
  esac
  echo "== fuzz_$t for ${seconds}s"
  # Seeds above 1 MB slow every mutation down; libFuzzer skips them.
  ASAN_OPTIONS=detect_leaks=1 "$build/fuzz_$t" "$corpus" -max_total_time="$seconds" \
    -max_len=1048576 -artifact_prefix="$build/artifacts/$t-" -print_final_stats=1 2>&1 |
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added|==[0-9]+==ERROR|SUMMARY)' || true
  if ls "$build/artifacts/$t-"* >/dev/null 2>&1; then
    echo "fuzz: fuzz_$t found a failing input: $(ls "$build/artifacts/$t-"*)" >&2
    exit 1
  fi
done
echo "== no failures"
