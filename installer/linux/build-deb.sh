#!/usr/bin/env bash
# Build proscribe-agent_<version>_<arch>.deb with dpkg-deb. The package carries its own
# virtual environment under /opt/proscribe, built by install.sh --root in a staging tree
# (install.sh points the venv's shebangs at /opt/proscribe, so the tree is correct once
# unpacked there). Its postinst runs the same configuration step as install.sh
# (install.sh --configure-only), so a .deb host and a script-installed host end up alike.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=build-deb.sh
usage() {
  cat <<'EOF'
Usage: build-deb.sh [--wheel FILE] [--wheelhouse DIR] [--python /usr/bin/python3] [-o OUTDIR]

Builds proscribe-agent_<version>_<arch>.deb into OUTDIR (default: the current directory).
  --wheel FILE      the proscribe wheel to package (default: build one from this source tree)
  --wheelhouse DIR  take every dependency from DIR, offline (default: the package index)
  --python PY       the target system's interpreter; the venv links to it, so it must be the
                    path the package's users have (default /usr/bin/python3 = Debian 12's 3.11)
  -o, --output DIR  where to write the .deb
EOF
}
die() { echo "$PROG: error: $*" >&2; exit 2; }

WHEEL="" WHEELHOUSE="" PY=/usr/bin/python3 OUT=.
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --wheel) [ $# -ge 2 ] || die "--wheel needs a file"; WHEEL=$2; shift ;;
    --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PY=$2; shift ;;
    -o|--output) [ $# -ge 2 ] || die "--output needs a directory"; OUT=$2; shift ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (fix: apt-get install dpkg)"
[ -x "$PY" ] || die "$PY not found (fix: pass --python with the target's python3 path)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PKG=$WORK/pkg

args=(--root "$PKG" --no-start --python "$PY")
[ -n "$WHEEL" ] && args+=(--wheel "$WHEEL")
[ -n "$WHEELHOUSE" ] && args+=(--wheelhouse "$WHEELHOUSE")
"$SCRIPT_DIR/install.sh" "${args[@]}" >/dev/null

# What dpkg owns: the venv and the default agent.toml (a conffile). The unit, the state
# directory and the install manifest are made by the postinst's configure step on the target,
# because the unit's capabilities follow the host's configured mode.
rm -f "$PKG/opt/proscribe/.install-manifest"
rm -rf "${PKG:?}/var" "${PKG:?}/etc/systemd"
install -m 0644 "$SCRIPT_DIR/default.example" "$PKG/opt/proscribe/share/installer/linux/default.example"

VERSION=$("$PKG/opt/proscribe/bin/python" -c 'from importlib.metadata import version; print(version("proscribe"))')
ARCH=$(dpkg --print-architecture)   # the venv holds compiled extensions (cryptography, psutil)
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SIZE=$(du -sk "$PKG" | cut -f1)

mkdir -p "$PKG/DEBIAN"
cat >"$PKG/DEBIAN/control" <<EOF
Package: proscribe-agent
Version: $VERSION
Architecture: $ARCH
Maintainer: Proscribe maintainers <proscribe@localhost>
Depends: python$PYVER, bash
Installed-Size: $SIZE
Section: admin
Priority: optional
Homepage: https://github.com/proscribe/proscribe
Description: Proscribe agent: enforce and prove bans on AI tools
 The endpoint daemon: watches processes and DNS, checks them against a signed TOML
 denylist, kills, sinkholes or reports what is banned and ships violations to the
 Proscribe collector. Self-contained virtual environment under /opt/proscribe.
EOF
echo /etc/proscribe/agent.toml >"$PKG/DEBIAN/conffiles"

# Maintainer scripts honour DPKG_ROOT, so "dpkg --root=DIR --force-script-chrootless"
# installs into a scratch root exactly as it would into /.
cat >"$PKG/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Configure step shared with install.sh: state dir, unit (capabilities from agent.toml),
# manifest; settings preseeded in /etc/default/proscribe are applied on first install.
set -e
if [ "$1" = configure ]; then
  previous="${2:-}"   # empty on first install
  set -- --configure-only --defaults-file "${DPKG_ROOT:-}/etc/default/proscribe"
  if [ -z "$previous" ] && grep -qE '^[A-Z_]+=[^[:space:]]' "${DPKG_ROOT:-}/etc/default/proscribe" 2>/dev/null; then
    set -- "$@" --force-config
  fi
  if [ -n "${DPKG_ROOT:-}" ]; then set -- "$@" --root "$DPKG_ROOT"; fi
  "${DPKG_ROOT:-}/opt/proscribe/share/installer/linux/install.sh" "$@"
fi
exit 0
EOF
cat >"$PKG/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# Stop the agent before its files go away (remove) or are replaced (upgrade).
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  case "$1" in
    remove|deconfigure) systemctl disable --now proscribe-agent.service >/dev/null 2>&1 || true ;;
    upgrade|failed-upgrade) systemctl stop proscribe-agent.service >/dev/null 2>&1 || true ;;
  esac
fi
exit 0
EOF
cat >"$PKG/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# remove: drop the generated unit (config and state stay, as Debian expects).
# purge: also the files the configure step wrote, and the state (spool, agent key, policy state).
set -e
R="${DPKG_ROOT:-}"
M="$R/var/lib/proscribe/.install-manifest"
case "$1" in
  remove)
    rm -f "$R/etc/systemd/system/proscribe-agent.service"
    if [ -f "$R/opt/proscribe/.install-manifest" ]; then
      mkdir -p "$R/var/lib/proscribe"
      mv "$R/opt/proscribe/.install-manifest" "$M"
    fi
    rmdir "$R/opt/proscribe" 2>/dev/null || true
    if [ -z "$R" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
    ;;
  purge)
    [ -f "$M" ] || M="$R/opt/proscribe/.install-manifest"
    if [ -f "$M" ]; then
      while read -r kind path; do
        case "$kind:$path" in
          file:/etc/proscribe/*|file:/etc/systemd/system/proscribe-agent.service) rm -f "$R$path" ;;
        esac
      done <"$M"
    fi
    rm -f "$R/etc/proscribe/agent.toml.bak"
    rm -rf "$R/var/lib/proscribe"
    rmdir "$R/etc/proscribe" 2>/dev/null || true
    ;;
esac
exit 0
EOF
chmod 0755 "$PKG/DEBIAN/postinst" "$PKG/DEBIAN/prerm" "$PKG/DEBIAN/postrm"

DEB="$OUT/proscribe-agent_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
