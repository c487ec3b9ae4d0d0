#!/usr/bin/env bash
# Build ProscribeAgent-<version>.pkg (pkgbuild + productbuild) on a Mac.
#
# NOT RUN IN CI: pkgbuild/productbuild only exist on macOS (see docs/limitations.md).
#
# The payload is /opt/proscribe (a virtual environment, its shebangs pointed at /opt/proscribe
# exactly as install.sh does on Linux) and /Library/LaunchDaemons/com.proscribe.agent.plist.
# The postinstall script writes /etc/proscribe/agent.toml with the same generator as Linux
# and Windows (installer/common/render_config.py --platform macos), from the managed
# preferences domain com.proscribe.agent (an MDM configuration profile, see docs/mdm.md), and
# only if no agent.toml exists yet; then it (re)loads the daemon.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
PROG=build-pkg.sh
usage() {
  cat <<'EOF'
Usage: build-pkg.sh --wheelhouse DIR --python PY [-o OUTDIR] [--sign "Developer ID Installer: …"]

  --wheelhouse DIR  proscribe wheel + dependencies built for macOS (build-wheelhouse.sh on a Mac)
  --python PY       the interpreter the targets have at the same path, e.g.
                    /Library/Frameworks/Python.framework/Versions/3.11/bin/python3
                    (the venv links to it; python.org's installer puts it there)
  --sign IDENTITY   productbuild --sign identity (needed for MDM distribution)
  -o DIR            output directory (default .)
EOF
}
die() { echo "$PROG: error: $*" >&2; exit 2; }

WHEELHOUSE="" PY="" OUT=. SIGN=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --wheelhouse) WHEELHOUSE=$2; shift ;;
    --python) PY=$2; shift ;;
    --sign) SIGN=$2; shift ;;
    -o) OUT=$2; shift ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[ "$(uname -s)" = Darwin ] || die "pkgbuild exists only on macOS"
[ -d "$WHEELHOUSE" ] || die "--wheelhouse DIR is required"
[ -x "$PY" ] || die "--python PY is required (an interpreter present on every target)"
command -v pkgbuild >/dev/null || die "pkgbuild not found (fix: xcode-select --install)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PAYLOAD=$WORK/payload PREFIX=/opt/proscribe STAGE="$WORK/payload/opt/proscribe"
mkdir -p "$PAYLOAD/opt" "$PAYLOAD/Library/LaunchDaemons" "$WORK/scripts"

"$PY" -m venv --without-pip "$STAGE"
"$PY" -m pip --python "$STAGE/bin/python" install -q --no-compile --no-index \
  --find-links "$WHEELHOUSE" proscribe
for f in "$STAGE"/bin/*; do
  [ -f "$f" ] && [ ! -L "$f" ] || continue
  if head -c 2 "$f" | grep -q '^#!' || [[ "$f" == */activate* ]]; then
    sed -i '' "s|$STAGE|$PREFIX|g" "$f"
  fi
done
sed -i '' "s|$STAGE|$PREFIX|g" "$STAGE/pyvenv.cfg"
mkdir -p "$STAGE/share/installer/common"
install -m 0644 "$REPO/installer/common/render_config.py" "$STAGE/share/installer/common/"
install -m 0644 "$SCRIPT_DIR/com.proscribe.agent.plist" "$PAYLOAD/Library/LaunchDaemons/"
VERSION=$("$STAGE/bin/python" -c 'from importlib.metadata import version; print(version("proscribe"))')

cat >"$WORK/scripts/preinstall" <<'EOF'
#!/bin/bash
# Upgrade: stop the running agent before its files are replaced. State in /var/db/proscribe
# (spool, agent key, policy state) is not part of the payload and is kept.
launchctl bootout system/com.proscribe.agent 2>/dev/null || true
exit 0
EOF
cat >"$WORK/scripts/postinstall" <<'EOF'
#!/bin/bash
# Write /etc/proscribe/agent.toml (first install only) from the managed preferences an MDM
# profile delivered for com.proscribe.agent, then load the daemon.
set -euo pipefail
PREFS="/Library/Managed Preferences/com.proscribe.agent.plist"
CONF=/etc/proscribe
pref() { /usr/libexec/PlistBuddy -c "Print :$1" "$PREFS" 2>/dev/null || true; }
mkdir -p "$CONF" /var/db/proscribe
chmod 0755 "$CONF"; chmod 0700 /var/db/proscribe
if [ ! -e "$CONF/agent.toml" ]; then
  args=(agent --platform macos --mode "$(pref Mode | grep . || echo enforce)"
        --dns "$(pref DNS | grep . || echo capture)" --threshold "$(pref Threshold | grep . || echo 1)")
  url=$(pref CollectorURL); [ -n "$url" ] && args+=(--collector-url "$url")
  secret=$(pref EnrollSecret)
  if [ -n "$secret" ]; then
    (umask 077; printf '%s\n' "$secret" >"$CONF/enroll.secret")
    args+=(--enroll-secret-file "$CONF/enroll.secret")
  fi
  ca=$(pref CACertificatePEM)
  if [ -n "$ca" ]; then printf '%s\n' "$ca" >"$CONF/ca.pem"; args+=(--ca-file "$CONF/ca.pem"); fi
  i=0
  while key=$(/usr/libexec/PlistBuddy -c "Print :TrustedKeys:$i" "$PREFS" 2>/dev/null); do
    args+=(--trusted-key "$key"); i=$((i + 1))
  done
  /opt/proscribe/bin/python /opt/proscribe/share/installer/common/render_config.py "${args[@]}" -o "$CONF/agent.toml"
fi
launchctl bootstrap system /Library/LaunchDaemons/com.proscribe.agent.plist 2>/dev/null \
  || launchctl kickstart -k system/com.proscribe.agent
exit 0
EOF
chmod 0755 "$WORK/scripts/preinstall" "$WORK/scripts/postinstall"

pkgbuild --root "$PAYLOAD" --scripts "$WORK/scripts" --identifier com.proscribe.agent \
  --version "$VERSION" --install-location / "$WORK/ProscribeAgent-component.pkg"
mkdir -p "$OUT"
sign_args=()
[ -n "$SIGN" ] && sign_args=(--sign "$SIGN")
productbuild ${sign_args[@]+"${sign_args[@]}"} --package "$WORK/ProscribeAgent-component.pkg" \
  "$OUT/ProscribeAgent-$VERSION.pkg"
echo "$OUT/ProscribeAgent-$VERSION.pkg"
