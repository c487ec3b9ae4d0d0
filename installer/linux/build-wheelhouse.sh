#!/usr/bin/env bash
# Make an offline wheelhouse: the proscribe wheel plus every dependency, for
# "install.sh --wheelhouse DIR" (or the Ansible role) on networks with no package index.
# The dependencies are exactly the lock's (requirements/agent.txt or collector.txt, made by
# scripts/lock.sh): pinned versions, every file checked against its sha256, so two builds from
# one lock ship the same versions. The lock is copied in as DIR/requirements.txt, and
# install.sh installs from it with --require-hashes.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=build-wheelhouse.sh
usage() {
  cat <<'EOF'
Usage: build-wheelhouse.sh -o DIR [--component agent|collector] [--wheel FILE] [--python PY]
                           [--lock FILE] [--wheel-only] [-- PIP-DOWNLOAD-OPTIONS…]

Writes the proscribe wheel (built from this source tree unless --wheel is given) and all of
its dependencies, as pinned (with hashes) in the lock, into DIR. Run it on a machine with index access and the same OS/CPU/Python
as the targets, or pass pip's target options after "--", e.g.
  -- --platform manylinux2014_x86_64 --python-version 3.11 --only-binary=:all:
Then copy DIR to the air-gapped network and run: install.sh --wheelhouse DIR
  --component collector   include the collector's extra dependencies
  --lock FILE             the lock to follow (default: requirements/agent.txt, or
                          requirements/collector.txt with --component collector)
  --wheel-only            build the proscribe wheel into DIR and stop (nothing downloaded)
EOF
}
die() { echo "$PROG: error: $*" >&2; exit 2; }

OUT="" WHEEL="" PY=python3 EXTRA="" LOCK="" COMPONENT=agent
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -o|--output) [ $# -ge 2 ] || die "$1 needs a directory"; OUT=$2; shift ;;
    --wheel) [ $# -ge 2 ] || die "--wheel needs a file"; WHEEL=$2; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PY=$2; shift ;;
    --component)
      [ $# -ge 2 ] || die "--component needs a value"
      case "$2" in agent) EXTRA="" ;; collector) EXTRA="[collector]" ;; *) die "--component must be agent or collector" ;; esac
      COMPONENT=$2
      shift ;;
    --lock) [ $# -ge 2 ] || die "--lock needs a file"; LOCK=$2; shift ;;
    --wheel-only) WHEEL_ONLY=1 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[ -n "$OUT" ] || die "-o DIR is required (see --help)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ -z "$WHEEL" ]; then
  src=$(cd "$SCRIPT_DIR/../.." && pwd)
  [ -f "$src/pyproject.toml" ] || die "$src is not a source tree (fix: pass --wheel FILE)"
  # Built from a copy without build/, .venv*, .git: setuptools reuses build/lib and would ship
  # modules that were deleted from the tree since the last build.
  copy=$(mktemp -d)
  tar -C "$src" --exclude=./build --exclude='./.venv*' --exclude=./.git -cf - . | tar -C "$copy" -xf -
  "$PY" -m pip wheel -q --no-deps -w "$OUT" "$copy" >&2 || { rm -rf "$copy"; die "building the wheel from $src failed"; }
  rm -rf "$copy"
  WHEEL=$(ls -t "$OUT"/proscribe-*.whl | head -n 1)
  if [ -n "${WHEEL_ONLY:-}" ]; then echo "$WHEEL"; exit 0; fi
else
  [ -f "$WHEEL" ] || die "--wheel $WHEEL: no such file"
  cp -f "$WHEEL" "$OUT/"
  WHEEL="$OUT/$(basename "$WHEEL")"
fi
: "${LOCK:=$SCRIPT_DIR/../../requirements/$COMPONENT.txt}"
[ -f "$LOCK" ] || die "$LOCK: no such lock (fix: run scripts/lock.sh, or pass --lock FILE)"
"$PY" -m pip download -q --disable-pip-version-check --require-hashes --no-deps \
  -r "$LOCK" -d "$OUT" "$@" >&2 \
  || die "pip download of the locked dependencies failed (see pip's message above)"
install -m 0644 "$LOCK" "$OUT/requirements.txt"
# Proof that the lock is complete for proscribe itself: resolve it from DIR alone, offline.
"$PY" -m pip download -q --disable-pip-version-check --no-index --find-links "$OUT" \
  -d "$OUT" "$@" "$WHEEL$EXTRA" >&2 \
  || die "$LOCK does not cover proscribe$EXTRA's dependencies (fix: run scripts/lock.sh)"
echo "$OUT"
ls -1 "$OUT" | sed 's/^/  /'
