#!/usr/bin/env bash
# Set up, configure, build and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh "$@"
build_dir=${ST_BUILD_DIR:-build}
ctest --test-dir "$build_dir" --output-on-failure -j 2
