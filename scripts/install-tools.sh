#!/usr/bin/env bash
# Installs the operators' tools the tests use: promtool (Debian's prometheus package), amtool
# (Debian's prometheus-alertmanager) and a compose-file validator (Debian's docker-compose,
# which parses without a Docker engine).
set -euo pipefail
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
