#!/usr/bin/env bash
# The README's first command: set up a virtual environment with the collector extra and run
# `proscribe demo` (collector + agent + a simulated DeepSeek violation + report + dashboard).
# Arguments are passed to `proscribe demo` (e.g. --once, --keep, --port 8443).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q --require-hashes --no-deps -r requirements/collector.txt
.venv/bin/pip install -q --no-deps -e '.[collector]' --config-settings editable_mode=strict
exec .venv/bin/proscribe demo "$@"
