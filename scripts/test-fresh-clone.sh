#!/usr/bin/env bash
# The unit tests in a fresh clone of this checkout's HEAD, in an empty temporary directory with
# nothing beside it (no ../shared): proves the suite reads nothing outside the repository.
# The clone gets its own venv and editable install of proscribe; the third-party packages are
# reused from this checkout's .venv (scripts/test.sh makes it) rather than downloaded again.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout_python="$PWD/.venv/bin/python"
if [ ! -x "$checkout_python" ]; then
  echo "test-fresh-clone: no .venv in $PWD; run scripts/test.sh first" >&2
  exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$PWD" "$work/proscribe"
cd "$work/proscribe"
# The same interpreter as the checkout's venv, so that its compiled packages load here too.
"$checkout_python" -m venv --without-pip .venv
purelib='import sysconfig; print(sysconfig.get_path("purelib"))'
"$checkout_python" -c "$purelib" >"$(.venv/bin/python -c "$purelib")/checkout-venv-packages.pth"
"$checkout_python" -m pip --python .venv/bin/python install -q --no-deps -e . \
  --config-settings editable_mode=strict
if [ "$(id -u)" = 0 ] && [ "${CI:-}" = true ]; then export PROSCRIBE_REQUIRE_ALL=1; fi
.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit "$@"
