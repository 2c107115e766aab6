#!/usr/bin/env bash
# Configures and builds into build/ (or $ST_BUILD_DIR). Extra arguments go to
# the CMake configure step, e.g. -DST_SANITIZE=address,undefined.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${ST_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=${ST_BUILD_TYPE:-Release} "$@" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
