#!/usr/bin/env bash
# Make ./.venv with the pinned requirements; a second call only checks that they are installed.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
