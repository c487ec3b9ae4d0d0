#!/usr/bin/env bash
# Remove what install.sh installed, and nothing else: exactly the paths listed in the
# manifest it wrote (PREFIX/.install-manifest). State (spool, agent key, policy state) stays
# unless --purge is given. See --help.
set -euo pipefail

PROG=uninstall.sh
usage() {
  cat <<'EOF'
Usage: uninstall.sh [--root DIR] [--component agent|collector] [--purge]

Stops and disables the service (where systemd runs), then removes every path that install.sh
recorded in /opt/proscribe/.install-manifest (or /opt/proscribe-collector/… for the collector).
Files it did not install - an agent.toml written by hand before the install, anything else
placed in /etc/proscribe - are left alone; /etc/proscribe itself is removed only if empty.

  --root DIR       uninstall from a staging root (no systemctl)
  --component NAME agent (default) or collector
  --purge          also remove the state directory (spool, agent key, policy state; for the
                   collector: its SQLite database) and the collector's system user
  -h, --help       show this help
EOF
}
die() { echo "$PROG: error: $*" >&2; exit 2; }

ROOT="" COMPONENT=agent PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
    --component) [ $# -ge 2 ] || die "--component needs a value"; COMPONENT=$2; shift ;;
    --purge) PURGE=1 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=""
fi
case "$COMPONENT" in
  agent) PREFIX=/opt/proscribe UNIT=proscribe-agent.service ;;
  collector) PREFIX=/opt/proscribe-collector UNIT=proscribe-collector.service ;;
  *) die "--component must be agent or collector" ;;
esac
MANIFEST="$ROOT$PREFIX/.install-manifest"
if [ -z "$ROOT" ] && command -v dpkg-query >/dev/null 2>&1 \
   && dpkg-query -S "$PREFIX/bin/proscribe" >/dev/null 2>&1; then
  die "$PREFIX belongs to the proscribe-$COMPONENT package (fix: apt-get remove proscribe-$COMPONENT, or apt-get purge to drop its configuration too)"
fi
[ -f "$MANIFEST" ] || die "$MANIFEST not found: nothing was installed here by install.sh (a .deb is removed with: apt-get remove proscribe-$COMPONENT)"

# A manifest is data; refuse entries outside the places install.sh writes to, so a damaged
# or tampered manifest cannot make this script delete anything else.
allowed() {
  case "$1" in
    *..*|*//*) return 1 ;;
    "$PREFIX"|/etc/proscribe|/etc/proscribe/*|/etc/systemd/system/proscribe-*.service) return 0 ;;
    /etc/systemd/system/proscribe-collector-purge.timer) return 0 ;;
    /etc/systemd/system/proscribe-agent.service.d|/etc/systemd/system/proscribe-agent.service.d/resolver.conf) return 0 ;;
    /etc/resolv.conf) return 0 ;;
    /var/lib/proscribe|/var/lib/proscribe-collector) return 0 ;;
    *) return 1 ;;
  esac
}

if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
  if [ "$UNIT" = proscribe-collector.service ]; then
    systemctl disable --now proscribe-collector-purge.timer >/dev/null 2>&1 || true
  fi
fi
# The agent's DNS redirect (dns = "auto"): removed at the agent's stop and inert within
# [dns] redirect_ttl once it is gone; deleted here too, whatever was left.
if [ -z "$ROOT" ] && [ "$UNIT" = proscribe-agent.service ] && command -v nft >/dev/null 2>&1; then
  nft delete table inet proscribe_dns >/dev/null 2>&1 || true
fi
# Managed browser policies the agent wrote ([enforce] browser_policies): its own files only.
if [ "$UNIT" = proscribe-agent.service ]; then
  for f in /etc/chromium/policies/managed/proscribe.json \
           /etc/opt/chrome/policies/managed/proscribe.json \
           /etc/opt/edge/policies/managed/proscribe.json; do
    rm -f "$ROOT$f"
  done
  ff="$ROOT/etc/firefox/policies/policies.json"
  if [ -f "$ff" ] && grep -q '"proscribe":' "$ff"; then rm -f "$ff"; fi
fi

files=() dirs=() trees=() states=() users=() resolvs=()
while IFS= read -r line; do
  [ -n "$line" ] || continue
  kind=${line%% *} path=${line#* }
  if [ "$kind" = user ]; then users+=("$path"); continue; fi
  allowed "$path" || { echo "$PROG: skipping manifest entry outside Proscribe's paths: $line" >&2; continue; }
  case "$kind" in
    file) files+=("$path") ;;
    dir) dirs+=("$path") ;;
    tree) trees+=("$path") ;;
    state) states+=("$path") ;;
    resolv) resolvs+=("$path") ;;
    *) echo "$PROG: skipping unknown manifest entry: $line" >&2 ;;
  esac
done <"$MANIFEST"

removed=()
# The system resolver first, while the original is still in /etc/proscribe.
for p in ${resolvs[@]+"${resolvs[@]}"}; do
  backup="$ROOT/etc/proscribe/resolv.conf.orig"
  if [ -f "$backup" ]; then
    cp -p "$backup" "$ROOT$p.proscribe-restore" && mv "$ROOT$p.proscribe-restore" "$ROOT$p"
    rm -f "$backup"
    removed+=("$p (restored to the original resolvers)")
  fi
done
for p in ${files[@]+"${files[@]}"}; do
  if [ -e "$ROOT$p" ] || [ -L "$ROOT$p" ]; then rm -f "$ROOT$p"; removed+=("$p"); fi
done
if [ "$PURGE" = 1 ]; then
  for p in ${states[@]+"${states[@]}"}; do
    if [ -e "$ROOT$p" ]; then rm -rf "$ROOT$p"; removed+=("$p (state)"); fi
    # DynamicUser/StateDirectory keep the real directory under /var/lib/private.
  done
fi
for p in ${trees[@]+"${trees[@]}"}; do
  if [ -e "$ROOT$p" ]; then rm -rf "$ROOT$p"; removed+=("$p"); fi
done
# Deepest first, and only if empty: a directory holding someone else's file stays.
for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
  p=${dirs[$i]}
  if [ -d "$ROOT$p" ]; then
    if rmdir "$ROOT$p" 2>/dev/null; then removed+=("$p"); else echo "kept $p: it holds files install.sh did not put there"; fi
  fi
done
if [ "$PURGE" = 1 ] && [ -z "$ROOT" ]; then
  for u in ${users[@]+"${users[@]}"}; do
    userdel "$u" 2>/dev/null && removed+=("user $u") || true
  done
fi
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi

echo "Proscribe $COMPONENT removed${ROOT:+ from staging root $ROOT}:"
printf '  - %s\n' ${removed[@]+"${removed[@]}"}
if [ "$PURGE" = 0 ]; then
  for p in ${states[@]+"${states[@]}"}; do
    [ -e "$ROOT$p" ] && echo "  kept state in $p (remove it with --purge)"
  done
fi
exit 0
