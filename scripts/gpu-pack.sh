#!/usr/bin/env bash
# Prepares a GPU check for a machine that cannot build the project (its
# image lacks oneDNN, jansson, cmocka): builds with CUDA here for the given
# architectures and packs into DIR the binaries, the non-CUDA shared
# libraries they need (compressed) and the PyTorch reference, so that
#   scripts/gpu-check.sh --out OUT --build-dir DIR/build --libs DIR/libs.tar.xz --ref DIR/ref
# runs there. DIR should be ignored by git (e.g. listed in .git/info/exclude).
#
#   [ST_PACK_SERVER=1] scripts/gpu-pack.sh DIR [CUDA_ARCHITECTURES]   (default 90: H100/H200)
#   ST_PACK_SERVER=1 adds the server, its tests, the load generator and
#   shadowtutor-clip (the clients-per-GPU sweep; FFmpeg libraries: +49 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/gpu-pack.sh DIR [CUDA_ARCHITECTURES]}
archs=${2:-90}
build=build-gpu-pack
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DST_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$archs" >/dev/null
cmake --build "$build" -j "$(nproc)"
rm -rf "$dir"
mkdir -p "$dir/build/tests" "$dir/ref"
cp "$build/shadowtutor-model" "$dir/build/"
cp "$build"/tests/test_* "$dir/build/tests/" 2>/dev/null || true
find "$dir/build/tests" -type f ! -perm -u+x -delete
# The server and its tests load FFmpeg's codecs and ~100 libraries with
# them (about 49 MB compressed): only with ST_PACK_SERVER=1, since the
# device's carry holds 64 MiB in all.
if [ "${ST_PACK_SERVER:-0}" = 1 ]; then
  cp "$build/shadowtutor-server" "$build/shadowtutor-loadgen" "$dir/build/"
  mkdir -p "$dir/build/client"
  cp "$build/client/shadowtutor-clip" "$dir/build/client/"
else
  for t in "$dir"/build/tests/test_*; do
    if ldd "$t" | grep -q libavcodec; then rm -f "$t"; fi
  done
fi
cp "${ST_REF_DIR:-../shared/reference}/shadowtutor_ref.py" "$dir/ref/"
# Shared libraries the binaries load, except the C runtime and CUDA (the
# GPU machine has its own); FFmpeg brings many codecs' libraries along.
libs=$(ldd "$dir"/build/shadowtutor-* "$dir"/build/client/* "$dir"/build/tests/test_* 2>/dev/null |
  awk '/=> \// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudnn[^/]*|libcublas[^/]*|libcudart|libnvrtc[^/]*)\.so' || true)
staging=$(mktemp -d)
for l in $libs; do cp -L "$l" "$staging/"; done
tar -C "$staging" -cf - . | xz -T0 -6 > "$dir/libs.tar.xz"
rm -rf "$staging"
du -sh "$dir"
