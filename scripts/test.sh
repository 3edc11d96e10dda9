#!/usr/bin/env bash
# The README's test command: install (CPU torch pinned for these machines) and run the default suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check torch==2.13.0 -e '.[test]'
python -m pytest "$@"
