#!/usr/bin/env bash
# Fresh machine -> test results: makes .venv, installs CPU torch and the project with its test extras,
# runs the suite (CPU only, offline: tests build their tiny models in code).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
exec .venv/bin/python -m pytest -q "$@"
