#!/usr/bin/env bash
# Set up a virtual environment with the test extras and run lint, types and the whole test suite.
# This is the README's second command; .ci/run calls it too.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
# Every dependency exactly as locked, hashes checked (requirements/test.txt: the agent's, the
# collector's and the test tools; scripts/lock.sh makes it), then the project itself without
# resolving anything more.
.venv/bin/pip install -q --require-hashes --no-deps -r requirements/test.txt
# Strict editable mode: a static tree of links (build/__editable__.*) that mypy, import-linter and
# editors follow like an installed package (docs/architecture.md). A new module needs this again.
.venv/bin/pip install -q --no-deps -e '.[collector,test]' --config-settings editable_mode=strict
.venv/bin/pip check >/dev/null || { .venv/bin/pip check; echo "requirements/test.txt does not satisfy pyproject.toml (fix: scripts/lock.sh)" >&2; exit 2; }
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
if [ "$(id -u)" = 0 ] && [ "${CI:-}" = true ]; then export PROSCRIBE_REQUIRE_ALL=1; fi
exec .venv/bin/python -m pytest -q "$@"
