#!/usr/bin/env bash
# The README's test command: install (CPU torch pinned for these machines) and run the default suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check torch==2.13.0 -e '.[test]'
# The book's own chapter-6 code, the reference of tests/test_book.py. --no-deps: its metadata asks for
# TensorFlow, JupyterLab and numpy<2.1, none of which its ch06 module uses.
pip install -q --disable-pip-version-check --no-deps llms-from-scratch==1.0.19
# One worker per core, each taking whole test files (module fixtures are built once): most tests wait on
# subprocesses, torch imports and signals, which overlap; the suite runs in about 0.7 of the serial time.
python -m pytest -n auto --dist loadfile "$@"
