#!/usr/bin/env bash
# Build proscribe-agent_<version>_<arch>.deb (or, with --component collector,
# proscribe-collector_<version>_<arch>.deb) with dpkg-deb. The package carries its own
# virtual environment under /opt/proscribe (/opt/proscribe-collector), built by install.sh
# --root in a staging tree (install.sh points the venv's shebangs at the final path, so the
# tree is correct once unpacked there). Its postinst runs the same configuration step as
# install.sh (install.sh --configure-only), so a .deb host and a script-installed host end up
# alike.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=build-deb.sh
usage() {
  cat <<'EOF'
Usage: build-deb.sh [--component agent|collector] [--wheel FILE] [--wheelhouse DIR]
                    [--python /usr/bin/python3] [-o OUTDIR]

Builds proscribe-agent_<version>_<arch>.deb (or proscribe-collector_…) into OUTDIR (default:
the current directory).
  --component NAME  agent (default) or collector
  --wheel FILE      the proscribe wheel to package (default: build one from this source tree)
  --wheelhouse DIR  take every dependency from DIR, offline (default: the package index)
  --python PY       the target system's interpreter; the venv links to it, so it must be the
                    path the package's users have (default /usr/bin/python3 = Debian 12's 3.11)
  -o, --output DIR  where to write the .deb
EOF
}
die() { echo "$PROG: error: $*" >&2; exit 2; }

WHEEL="" WHEELHOUSE="" PY=/usr/bin/python3 OUT=. COMPONENT=agent
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --component) [ $# -ge 2 ] || die "--component needs agent or collector"; COMPONENT=$2; shift ;;
    --wheel) [ $# -ge 2 ] || die "--wheel needs a file"; WHEEL=$2; shift ;;
    --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PY=$2; shift ;;
    -o|--output) [ $# -ge 2 ] || die "--output needs a directory"; OUT=$2; shift ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
case "$COMPONENT" in
  agent) NAME=proscribe-agent PREFIX=/opt/proscribe ;;
  collector) NAME=proscribe-collector PREFIX=/opt/proscribe-collector ;;
  *) die "--component must be agent or collector" ;;
esac
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (fix: apt-get install dpkg)"
[ -x "$PY" ] || die "$PY not found (fix: pass --python with the target's python3 path)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PKG=$WORK/pkg

args=(--root "$PKG" --no-start --python "$PY" --component "$COMPONENT")
[ -n "$WHEEL" ] && args+=(--wheel "$WHEEL")
[ -n "$WHEELHOUSE" ] && args+=(--wheelhouse "$WHEELHOUSE")
"$SCRIPT_DIR/install.sh" "${args[@]}" >/dev/null

# What dpkg owns: the venv and the default config (a conffile). The units, the state
# directory and the install manifest are made by the postinst's configure step on the target,
# because they follow the host's configuration (the agent's capabilities follow its mode; the
# collector's retention timer exists only when asked for).
rm -f "$PKG$PREFIX/.install-manifest"
rm -rf "${PKG:?}/var" "${PKG:?}/etc/systemd"
install -m 0644 "$SCRIPT_DIR/default.example" "$SCRIPT_DIR/default-collector.example" \
  "$PKG$PREFIX/share/installer/linux/"

VERSION=$("$PKG$PREFIX/bin/python" -c 'from importlib.metadata import version; print(version("proscribe"))')
ARCH=$(dpkg --print-architecture)   # the venv holds compiled extensions (cryptography, psutil)
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SIZE=$(du -sk "$PKG" | cut -f1)

mkdir -p "$PKG/DEBIAN"
if [ "$COMPONENT" = agent ]; then
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
  # Preseeded settings are applied on first install, and later too (dpkg-reconfigure) while
  # agent.toml is still the unconfigured default (no trusted key: the agent is not started).
  if grep -qE '^[A-Z_]+=[^[:space:]]' "${DPKG_ROOT:-}/etc/default/proscribe" 2>/dev/null; then
    if [ -z "$previous" ] || grep -q '^trusted_keys = \[\]' "${DPKG_ROOT:-}/etc/proscribe/agent.toml" 2>/dev/null; then
      set -- "$@" --force-config
    fi
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
else
cat >"$PKG/DEBIAN/control" <<EOF
Package: proscribe-collector
Version: $VERSION
Architecture: $ARCH
Maintainer: Proscribe maintainers <proscribe@localhost>
Depends: python$PYVER, bash, passwd
Installed-Size: $SIZE
Section: admin
Priority: optional
Homepage: https://github.com/proscribe/proscribe
Description: Proscribe collector: the fleet's evidence of AI-tool bans
 Enrolls Proscribe agents, takes their signed events and heartbeats, distributes the
 signed policy, and serves the compliance dashboard and reports. SQLite by default,
 PostgreSQL for fleets. Self-contained virtual environment under /opt/proscribe-collector.
EOF
echo /etc/proscribe/collector.toml >"$PKG/DEBIAN/conffiles"

cat >"$PKG/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Configure step shared with install.sh --component collector: system user, unit (and the
# retention timer if RETENTION is set), manifest; settings preseeded in
# /etc/default/proscribe-collector are applied on first install.
set -e
if [ "$1" = configure ]; then
  previous="${2:-}"   # empty on first install
  set -- --component collector --configure-only \
    --defaults-file "${DPKG_ROOT:-}/etc/default/proscribe-collector"
  if [ -z "$previous" ] && grep -qE '^[A-Z_]+=[^[:space:]]' "${DPKG_ROOT:-}/etc/default/proscribe-collector" 2>/dev/null; then
    set -- "$@" --force-config
  fi
  if [ -n "${DPKG_ROOT:-}" ]; then set -- "$@" --root "$DPKG_ROOT"; fi
  "${DPKG_ROOT:-}/opt/proscribe-collector/share/installer/linux/install.sh" "$@"
fi
exit 0
EOF
cat >"$PKG/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# Stop the collector (and its retention timer) before its files go away or are replaced.
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  case "$1" in
    remove|deconfigure)
      systemctl disable --now proscribe-collector-purge.timer >/dev/null 2>&1 || true
      systemctl disable --now proscribe-collector.service >/dev/null 2>&1 || true ;;
    upgrade|failed-upgrade) systemctl stop proscribe-collector.service >/dev/null 2>&1 || true ;;
  esac
fi
exit 0
EOF
cat >"$PKG/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# remove: drop the generated units (configuration stays, as Debian expects).
# purge: also the files the configure step wrote. The database under
# /var/lib/proscribe-collector is the fleet's evidence and is NOT deleted: remove it by hand.
set -e
R="${DPKG_ROOT:-}"
U="$R/etc/systemd/system"
M="$R/var/lib/proscribe-collector/.install-manifest"
case "$1" in
  remove)
    rm -f "$U/proscribe-collector.service" "$U/proscribe-collector-purge.service" \
      "$U/proscribe-collector-purge.timer"
    if [ -f "$R/opt/proscribe-collector/.install-manifest" ]; then
      mkdir -p "$R/var/lib/proscribe-collector"
      mv "$R/opt/proscribe-collector/.install-manifest" "$M"
    fi
    rmdir "$R/opt/proscribe-collector" 2>/dev/null || true
    if [ -z "$R" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
    ;;
  purge)
    [ -f "$M" ] || M="$R/opt/proscribe-collector/.install-manifest"
    if [ -f "$M" ]; then
      while read -r kind path; do
        case "$kind:$path" in
          file:/etc/proscribe/*|file:/etc/systemd/system/proscribe-collector*) rm -f "$R$path" ;;
        esac
      done <"$M"
      rm -f "$M"
    fi
    rm -f "$R/etc/proscribe/collector.toml.bak"
    rmdir "$R/etc/proscribe" 2>/dev/null || true
    if [ -d "$R/var/lib/proscribe-collector" ]; then
      echo "proscribe-collector: kept /var/lib/proscribe-collector (the evidence database); remove it by hand if it must go" >&2
    fi
    ;;
esac
exit 0
EOF
fi
chmod 0755 "$PKG/DEBIAN/postinst" "$PKG/DEBIAN/prerm" "$PKG/DEBIAN/postrm"

DEB="$OUT/${NAME}_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
