#!/usr/bin/env bash
# The project's test command: installs the real broker if it is not cached yet, then runs
# every test (unit, fixture, black-box against tansu) and the benches once in test mode.
set -euo pipefail
cd "$(dirname "$0")/.."
CARESTREAM_TANSU="$(scripts/install-broker.sh)"
export CARESTREAM_TANSU
cargo test --all-targets --locked "$@"
