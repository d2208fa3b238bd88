#!/usr/bin/env bash
# Fresh machine -> a real edit offline: makes .venv, installs the project and edits the toy-world demo
# clip (two blue squares) with the small model the project trained and ships (videograin.toy: src/videograin/toy/sd):
# the left square becomes a yellow triangle, the right one a purple circle, the background is kept.
# Writes out/toyworld_demo/ (edited.mp4, comparison.gif, comparison.png, run.json, ...).
# With Stable Diffusion 1.5 (downloaded on first use, GPU recommended):
#   .venv/bin/videograin edit examples/two_balls/config.yaml --out out/two_balls_sd15
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e .
exec .venv/bin/videograin demo --out out/toyworld_demo --overwrite "$@"
