#!/usr/bin/env bash
# The built-in example: create a dataset, inspect it, validate it, read it from Python.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
mkdir -p demo
run() { echo; echo "\$ $*"; "$@"; }
run "$BIN/kino" create-test demo/demo.kdb -n 200 --frames 50 --images --compress 90 --seed 7 --force
run "$BIN/kino" info demo/demo.kdb
run "$BIN/kino" schema demo/demo.kdb
run "$BIN/kino" validate demo/demo.kdb
run "$BIN/python" examples/read_episode.py demo/demo.kdb
