#!/usr/bin/env bash
# Fresh machine -> an edit of the bundled example, offline: makes .venv, installs the project, writes
# the tiny random-weight model (its output is noise, but every stage runs) and edits
# examples/two_balls into out/two_balls (edited.mp4, comparison.gif, run.json, ...).
# With real weights: .venv/bin/videograin edit examples/two_balls/config.yaml --out out/two_balls_sd15
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e .
[ -f out/tiny-model/model_index.json ] || .venv/bin/videograin make-tiny-model out/tiny-model
exec .venv/bin/videograin edit examples/two_balls/config.yaml --model out/tiny-model --out out/two_balls --overwrite "$@"
