#!/usr/bin/env bash
# Fresh machine -> test results: makes .venv, installs CPU torch and the project with its test extras,
# runs the suite (CPU only, offline: tests build their tiny models in code). The web app's browser test
# drives Debian's chromium (installed here with apt-get when missing and this runs as root; without it
# that test is skipped, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
        || echo "note: could not install chromium; the web app's browser test will be skipped" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
exec .venv/bin/python -m pytest -q --durations=15 "$@"
