#!/usr/bin/env bash
# Starts tansu on loopback with sqlite storage and waits until it accepts connections.
#   scripts/start-broker.sh [PORT] [DATA_DIR]   (defaults: 19092, target/broker)
# Writes DATA_DIR/tansu.pid and DATA_DIR/tansu.log. Stop it with scripts/stop-broker.sh.
set -euo pipefail
port="${1:-19092}"
data="${2:-target/broker}"
bin="$("$(dirname "$0")/install-broker.sh")"
mkdir -p "$data"
data="$(cd "$data" && pwd)"
if [ -f "$data/tansu.pid" ] && kill -0 "$(cat "$data/tansu.pid")" 2>/dev/null; then
  echo "tansu already running (pid $(cat "$data/tansu.pid")) on 127.0.0.1:$port"
  exit 0
fi
# tansu reads the sqlite URL's path relative to its working directory, so start it there.
(cd "$data" && exec nohup "$bin" broker \
  --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine "sqlite://tansu.db" >"$data/tansu.log" 2>&1) &
echo $! >"$data/tansu.pid"
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "tansu running (pid $(cat "$data/tansu.pid")) on 127.0.0.1:$port, data in $data"
    exit 0
  fi
  sleep 0.1
done
echo "tansu did not start; log:" >&2
cat "$data/tansu.log" >&2
exit 1
