#!/usr/bin/env bash
# The project's test command: installs the real broker (cached) and the operators' tools if
# missing, then runs every test (unit, fixture, scenario, black-box against tansu, deploy
# files) and the benches once in test mode.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-tools.sh
CARESTREAM_TANSU="$(scripts/install-broker.sh)"
export CARESTREAM_TANSU
cargo test --all-targets --locked "$@"
