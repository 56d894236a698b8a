#!/usr/bin/env bash
# Installs the peers of the end-to-end benchmark (Quix Streams, Bytewax with its Kafka
# connector, fastavro) in a venv cached
# where later runs reuse it. Prints the venv's python. Needs PyPI.
set -euo pipefail
venv="${CARESTREAM_PEER_VENV:-$HOME/.cache/carestream/peer-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "quixstreams==3.28.1" "bytewax[kafka]==0.21.1" "fastavro==1.13.1" >&2
echo "$venv/bin/python"
