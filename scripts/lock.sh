#!/usr/bin/env bash
# Regenerate the dependency locks in requirements/ from pyproject.toml (docs/install.md, "The
# dependency lock"). Every build installs from them: the offline wheelhouse and so the .deb
# packages (installer/linux/build-wheelhouse.sh), install.sh from a source tree, CI and the
# README's commands (scripts/test.sh, scripts/demo.sh).
#
#   scripts/lock.sh                          keep today's pins; add only what pyproject now needs
#   scripts/lock.sh --upgrade                move every pin to the newest allowed release
#   scripts/lock.sh --upgrade-package NAME   move one package (repeatable)
#
# uv, pinned below, resolves one lock for every platform and Python >= 3.11 (--universal:
# environment markers instead of one machine's answers) with the sha256 of every file of every
# pinned release (--generate-hashes), so pip installs them with --require-hashes anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
python3 -m venv .venv-lock
.venv-lock/bin/pip install -q --disable-pip-version-check "uv==$UV_VERSION"
for spec in "agent:" "collector:--extra collector" "test:--extra collector --extra test"; do
  name=${spec%%:*}
  read -r -a extras <<<"${spec#*:}"
  .venv-lock/bin/uv pip compile pyproject.toml ${extras[@]+"${extras[@]}"} "$@" \
    --universal --python-version 3.11 --generate-hashes --quiet \
    --custom-compile-command "scripts/lock.sh" -o "requirements/$name.txt"
  echo "requirements/$name.txt: $(grep -c '^[a-z]' "requirements/$name.txt") pins"
done
