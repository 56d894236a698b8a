#!/usr/bin/env bash
# The project's test command: installs the real broker (Apache Kafka, resolved by Maven and
# cached outside the work tree) and the operators' tools if missing, then runs every test
# (unit, fixture, scenario, black-box against Kafka, deploy files) and the benches once in
# test mode. CARESTREAM_TEST_BROKER=tansu runs the broker tests on tansu instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-tools.sh
if [ "${CARESTREAM_TEST_BROKER:-kafka}" = tansu ]; then
  CARESTREAM_TANSU="$(scripts/install-broker.sh)"
  export CARESTREAM_TANSU
else
  scripts/install-kafka.sh >/dev/null
fi
cargo test --all-targets --locked "$@"
