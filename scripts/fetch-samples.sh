#!/usr/bin/env bash
# Real sample videos for the evaluation and the demo: the OpenCV sample
# clips that Debian ships in the opencv-doc package (installed on demand:
# ~96 MB download), copied into samples/ (ignored by git).
#
#   scripts/fetch-samples.sh [CLIP...]     default: vtest.avi Megamind.avi
set -euo pipefail
cd "$(dirname "$0")/.."
src=/usr/share/doc/opencv-doc/examples/data
clips=("$@")
((${#clips[@]})) || clips=(vtest.avi Megamind.avi)
if [ ! -d "$src" ]; then
  echo "fetch-samples: installing opencv-doc (Debian) for its sample videos"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends opencv-doc
fi
mkdir -p samples
for c in "${clips[@]}"; do
  f="$src/$c"
  # Debian may ship large files compressed.
  if [ -f "$f" ]; then
    cp -u "$f" "samples/$c"
  elif [ -f "$f.gz" ]; then
    gzip -dc "$f.gz" > "samples/$c"
  else
    echo "fetch-samples: $c is not in opencv-doc ($src)" >&2
    exit 1
  fi
  echo "samples/$c"
done
