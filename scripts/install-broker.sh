#!/usr/bin/env bash
# Installs the real Kafka-protocol broker of shared/BROKER.md (tansu 0.6.0 with sqlite
# storage) into a cache outside the work tree, so later runs and clones reuse the ~12 minute
# build. Prints the binary's path on stdout.
set -euo pipefail
version=0.6.0
cache="${CARESTREAM_CACHE:-$HOME/.cache/carestream}"
root="$cache/tansu-$version"
bin="$root/bin/tansu"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "installing tansu $version into $root (one-off, ~12 min on 2 cores)" >&2
  # Its own target dir keeps the build apart from the project's; -j2 fits the machine.
  CARGO_TARGET_DIR="$cache/tansu-build" cargo install tansu --version "$version" --locked \
    --features libsql --root "$root" -j 2 >&2
  rm -rf "$cache/tansu-build"
fi
echo "$bin"
