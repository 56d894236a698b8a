#!/usr/bin/env bash
# Stops the Kafka nodes that scripts/start-kafka.sh started under DATA_DIR (default target/kafka).
set -euo pipefail
data="${1:-target/kafka}"
for pidfile in "$data"/node-*/kafka.pid; do
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    state="$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null || true)"
    { [ -z "$state" ] || [ "$state" = Z ]; } && break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
done
