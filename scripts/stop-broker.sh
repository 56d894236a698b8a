#!/usr/bin/env bash
# Stops the tansu started by scripts/start-broker.sh [DATA_DIR].
set -euo pipefail
data="${1:-target/broker}"
if [ -f "$data/tansu.pid" ]; then
  kill "$(cat "$data/tansu.pid")" 2>/dev/null || true
  rm -f "$data/tansu.pid"
fi
