#!/usr/bin/env bash
# Install (or upgrade in place) the Proscribe agent or collector on a Linux host.
#
#   install.sh [--root DIR] [--wheel FILE | --wheelhouse DIR] [config flags…]
#
# Builds a virtual environment under /opt/proscribe, writes /etc/proscribe/agent.toml from the
# flags, installs a hardened systemd unit and starts it where systemd runs. Everything it
# creates is listed in PREFIX/.install-manifest so that uninstall.sh removes exactly that.
# See --help and docs/install.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
COMMON_DIR=$(cd "$SCRIPT_DIR/../common" && pwd)
PROG=install.sh

usage() {
  cat <<'EOF'
Usage: install.sh [OPTIONS]

Installs the Proscribe agent (default) or collector into a virtual environment under
/opt/proscribe, writes its configuration and systemd unit, and starts it where systemd runs.
Running it again upgrades in place: the state directory (spool, agent key, policy state) is
kept, and an existing config file is kept unless --force-config is given.

Where the software comes from (default: build a wheel from the source tree around this script;
dependencies then come from the package index):
  --wheel FILE            install this proscribe wheel
  --wheelhouse DIR        offline: install from DIR only (pip --no-index --find-links DIR);
                          DIR holds the proscribe wheel and all its dependencies
  --python PY             interpreter for the virtual environment (default: python3, >= 3.11)

What to do:
  --component NAME        agent (default) or collector
  --root DIR              install into the staging root DIR (every path is prefixed with DIR;
                          no systemctl, no users created): for packaging and tests
  --configure-only        do not touch the virtual environment; write config, unit, state dir
                          (used by the .deb's postinst)
  --force-config          overwrite an existing config file (the old one is kept as .bak)
  --defaults-file FILE    read KEY=VALUE settings (see /etc/default/proscribe) for flags not
                          given on the command line
  --no-start              install and enable nothing in systemd; print the commands instead

Agent configuration (written to /etc/proscribe/agent.toml):
  --collector-url URL     collector address (https://…; http:// only for loopback)
  --ca-file FILE          CA bundle for the collector's TLS (copied to /etc/proscribe/ca.pem)
  --enroll-secret-file F  enroll secret (copied to /etc/proscribe/enroll.secret, mode 0600)
  --trusted-key KEY       policy signing key: "ed25519:…" or a .pub file (repeatable)
  --threshold N           signatures needed on a policy (default 1)
  --mode MODE             enforce (default) or monitor (never kills, denies or sinkholes)
  --dns MODE              auto (default: resolver + capture + nftables redirect in enforce
                          mode, capture in monitor mode), capture, proxy or off
  --dns-proxy-listen H:P  where the DNS proxy listens (default 127.0.0.1:53)
  --point-resolver        with --dns proxy: point the system resolver at the proxy, keeping the
                          original servers as fallback (/etc/resolv.conf; or a systemd-resolved
                          drop-in where resolv.conf is a symlink); uninstall.sh restores it
  --policy FILE           initial signed policy; FILE.sig must sit beside it

Collector configuration (written to /etc/proscribe/collector.toml):
  --listen HOST:PORT      default 127.0.0.1:8443 (plain HTTP only on loopback)
  --tls-cert FILE --tls-key FILE   copied to /etc/proscribe/collector.{crt,key}
  --behind-proxy          a TLS-terminating reverse proxy sits in front
  --database-url URL      default sqlite:////var/lib/proscribe-collector/collector.db
  --trusted-key, --threshold   as above: keys the collector checks uploaded policies against
  --retention DAYS        also install a daily timer that deletes events and host history
                          older than DAYS days (proscribe collector purge; audited)

  -h, --help              show this help
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }
note() { DONE+=("$*"); }

# ---- arguments -----------------------------------------------------------------------------
POINT_RESOLVER=0 ROOT="" COMPONENT="" WHEEL="" WHEELHOUSE="" PY="" CONFIGURE_ONLY=0 FORCE_CONFIG="" NO_START=0
DEFAULTS_FILE="" COLLECTOR_URL="" CA_FILE="" SECRET_FILE="" THRESHOLD="" MODE="" DNS=""
DNS_LISTEN="" POLICY="" LISTEN="" TLS_CERT="" TLS_KEY="" BEHIND_PROXY="" DATABASE_URL="" RETENTION=""
TRUSTED_KEYS=()
DONE=()
KEY_COUNT=1 NOT_CONFIGURED=""

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --root) need_value "$@"; ROOT=$2; shift ;;
    --component) need_value "$@"; COMPONENT=$2; shift ;;
    --wheel) need_value "$@"; WHEEL=$2; shift ;;
    --wheelhouse) need_value "$@"; WHEELHOUSE=$2; shift ;;
    --python) need_value "$@"; PY=$2; shift ;;
    --configure-only) CONFIGURE_ONLY=1 ;;
    --force-config) FORCE_CONFIG=yes ;;
    --defaults-file) need_value "$@"; DEFAULTS_FILE=$2; shift ;;
    --no-start) NO_START=1 ;;
    --collector-url) need_value "$@"; COLLECTOR_URL=$2; shift ;;
    --ca-file) need_value "$@"; CA_FILE=$2; shift ;;
    --enroll-secret-file) need_value "$@"; SECRET_FILE=$2; shift ;;
    --trusted-key) need_value "$@"; TRUSTED_KEYS+=("$2"); shift ;;
    --threshold) need_value "$@"; THRESHOLD=$2; shift ;;
    --mode) need_value "$@"; MODE=$2; shift ;;
    --dns) need_value "$@"; DNS=$2; shift ;;
    --dns-proxy-listen) need_value "$@"; DNS_LISTEN=$2; shift ;;
    --point-resolver) POINT_RESOLVER=1 ;;
    --policy) need_value "$@"; POLICY=$2; shift ;;
    --listen) need_value "$@"; LISTEN=$2; shift ;;
    --tls-cert) need_value "$@"; TLS_CERT=$2; shift ;;
    --tls-key) need_value "$@"; TLS_KEY=$2; shift ;;
    --behind-proxy) BEHIND_PROXY=yes ;;
    --database-url) need_value "$@"; DATABASE_URL=$2; shift ;;
    --retention) need_value "$@"; RETENTION=$2; shift ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

# KEY=VALUE lines, read as data (never sourced). A flag on the command line wins.
if [ -n "$DEFAULTS_FILE" ] && [ -f "$DEFAULTS_FILE" ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    line=$(printf '%s' "$line" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
    [ -z "$line" ] && continue
    case "$line" in *=*) ;; *) die "$DEFAULTS_FILE: '$line' is not KEY=VALUE" ;; esac
    key=${line%%=*} value=${line#*=}
    value=${value#\"} value=${value%\"}
    [ -z "$value" ] && continue
    case "$key" in
      COLLECTOR_URL) : "${COLLECTOR_URL:=$value}" ;;
      CA_FILE) : "${CA_FILE:=$value}" ;;
      ENROLL_SECRET_FILE) : "${SECRET_FILE:=$value}" ;;
      TRUSTED_KEYS) if [ ${#TRUSTED_KEYS[@]} -eq 0 ]; then read -r -a TRUSTED_KEYS <<<"$value"; fi ;;
      THRESHOLD) : "${THRESHOLD:=$value}" ;;
      MODE) : "${MODE:=$value}" ;;
      DNS) : "${DNS:=$value}" ;;
      DNS_PROXY_LISTEN) : "${DNS_LISTEN:=$value}" ;;
      POLICY) : "${POLICY:=$value}" ;;
      FORCE_CONFIG) : "${FORCE_CONFIG:=$value}" ;;
      LISTEN) : "${LISTEN:=$value}" ;;
      DATABASE_URL) : "${DATABASE_URL:=$value}" ;;
      BEHIND_PROXY) : "${BEHIND_PROXY:=$value}" ;;
      RETENTION) : "${RETENTION:=$value}" ;;
      *) die "$DEFAULTS_FILE: unknown key '$key' (fix: see the comments in that file)" ;;
    esac
  done <"$DEFAULTS_FILE"
fi
[ "$FORCE_CONFIG" = yes ] || FORCE_CONFIG=""
[ "$BEHIND_PROXY" = yes ] || BEHIND_PROXY=""

: "${COMPONENT:=agent}" "${PY:=python3}" "${THRESHOLD:=1}" "${MODE:=enforce}" "${DNS:=auto}"
: "${LISTEN:=127.0.0.1:8443}"
case "$COMPONENT" in agent|collector) ;; *) die "--component must be agent or collector" ;; esac
if [ -n "$RETENTION" ]; then
  [ "$COMPONENT" = collector ] || die "--retention is for --component collector"
  [[ "$RETENTION" =~ ^[1-9][0-9]{0,5}$ ]] || die "--retention $RETENTION: give a whole number of days, e.g. 400"
fi
case "$MODE" in enforce|monitor) ;; *) die "--mode must be enforce or monitor, got '$MODE'" ;; esac
case "$DNS" in auto|capture|proxy|off) ;; *) die "--dns must be auto, capture, proxy or off, got '$DNS'" ;; esac
[ "$POINT_RESOLVER" = 0 ] || [ "$DNS" = proxy ] || die "--point-resolver needs --dns proxy (the resolver is pointed at the agent's DNS proxy)"
case "$THRESHOLD" in ''|*[!0-9]*) die "--threshold must be a positive integer" ;; esac
[ -n "$WHEEL" ] && { [ -f "$WHEEL" ] || die "--wheel $WHEEL: no such file"; WHEEL=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL"); }
[ -n "$WHEELHOUSE" ] && { [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE: no such directory"; }
for f in "$CA_FILE" "$SECRET_FILE" "$TLS_CERT" "$TLS_KEY"; do
  [ -z "$f" ] || [ -r "$f" ] || die "$f: cannot read it (fix: check the path given to the flag)"
done
if [ -n "$POLICY" ]; then
  [ -r "$POLICY" ] || die "--policy $POLICY: cannot read it"
  [ -r "$POLICY.sig" ] || die "--policy $POLICY: its signature $POLICY.sig is missing (fix: run 'proscribe policy sign' first)"
fi
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=""
fi

# ---- layout --------------------------------------------------------------------------------
CONF_DIR=/etc/proscribe
UNIT_DIR=/etc/systemd/system
if [ "$COMPONENT" = agent ]; then
  PREFIX=/opt/proscribe STATE_DIR=/var/lib/proscribe UNIT=proscribe-agent.service
  CONFIG=$CONF_DIR/agent.toml
else
  PREFIX=/opt/proscribe-collector STATE_DIR=/var/lib/proscribe-collector
  UNIT=proscribe-collector.service CONFIG=$CONF_DIR/collector.toml
  SERVICE_USER=proscribe
fi
MANIFEST=$PREFIX/.install-manifest
r() { printf '%s%s' "$ROOT" "$1"; }   # a final path inside the (staging) root

# Manifest lines: "tree P" (removed recursively), "file P", "dir P" (removed if empty),
# "state P" (removed only with uninstall --purge), "user NAME". Earlier installs' lines are
# kept, so an upgrade still knows what the first install created.
declare -A SEEN=()
ENTRIES=()
record() { if [ -z "${SEEN["$1 $2"]:-}" ]; then SEEN["$1 $2"]=1; ENTRIES+=("$1 $2"); fi; }
if [ -f "$(r "$MANIFEST")" ]; then
  while IFS= read -r line; do [ -n "$line" ] && record "${line%% *}" "${line#* }"; done <"$(r "$MANIFEST")"
fi
make_dir() {  # make_dir PATH MODE: create and record it if it did not exist
  if [ ! -d "$(r "$1")" ]; then
    mkdir -p "$(r "$1")"
    record dir "$1"
  fi
  chmod "$2" "$(r "$1")"
}

# ---- the virtual environment ---------------------------------------------------------------
install_venv() {
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$PY: Python 3.11 or newer is needed (fix: pass --python /path/to/python3.11)"
  "$PY" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$PY cannot create virtual environments (fix: apt-get install python3-venv)"

  local extra="" target pip_args=(--no-compile --disable-pip-version-check -q)
  [ "$COMPONENT" = collector ] && extra="[collector]"
  if [ -n "$WHEELHOUSE" ]; then
    pip_args+=(--no-index --find-links "$WHEELHOUSE")
  fi
  if [ -n "$WHEEL" ]; then
    target="$WHEEL$extra"
  elif [ -n "$WHEELHOUSE" ]; then
    target="proscribe$extra"
  else
    local src
    src=$(cd "$SCRIPT_DIR/../.." && pwd)
    [ -f "$src/pyproject.toml" ] || die "no --wheel or --wheelhouse given and $src is not a source tree (fix: pass --wheel FILE or --wheelhouse DIR)"
    BUILD_DIR=$(mktemp -d)
    trap 'rm -rf "$BUILD_DIR"' EXIT
    "$PY" -m pip wheel -q --no-deps -w "$BUILD_DIR" "$src" >&2 || die "building the wheel from $src failed"
    WHEEL=$(ls "$BUILD_DIR"/proscribe-*.whl)
    target="$WHEEL$extra"
    note "built $(basename "$WHEEL") from $src"
  fi

  # Build beside the old one, then swap: a running daemon keeps its open files until restart,
  # and a failed build leaves the installed version untouched.
  local new old final
  final=$(r "$PREFIX") new="$(r "$PREFIX").new" old="$(r "$PREFIX").old"
  rm -rf "$new" "$old"
  mkdir -p "$(dirname "$final")"
  # The runtime environment carries no pip or setuptools (smaller, nothing to run but the
  # agent). The outer interpreter's pip installs into it when it can (pip >= 22.3 has
  # --python); otherwise the venv bootstraps its own pip and drops it afterwards.
  local pip=()
  if "$PY" -c 'import sys, pip; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 3))' 2>/dev/null; then
    "$PY" -m venv --without-pip "$new"
    pip=("$PY" -m pip --python "$new/bin/python")
  else
    "$PY" -m venv "$new"
    pip=("$new/bin/python" -m pip)
  fi
  # The dependencies as locked (exact versions, sha256 checked), then proscribe itself: its
  # own requirements are then already met, and anything the lock lacks fails here, loudly.
  local lock
  lock=$(lock_file)
  if [ -n "$lock" ]; then
    "${pip[@]}" install "${pip_args[@]}" --require-hashes --no-deps -r "$lock" >&2 \
      || { rm -rf "$new"; die "pip could not install the locked dependencies from $lock (fix: see pip's message above)"; }
    note "installed the dependencies pinned in $lock (hashes checked)"
  else
    note "no dependency lock found: dependencies resolved by pip, not pinned (see docs/install.md)"
  fi
  "${pip[@]}" install "${pip_args[@]}" "$target" >&2 \
    || { rm -rf "$new"; die "pip could not install $target${WHEELHOUSE:+ from $WHEELHOUSE} (fix: see pip's message above)"; }
  if [ -x "$new/bin/pip" ]; then
    "$new/bin/python" -m pip uninstall -y -q pip setuptools >/dev/null 2>&1 || true
  fi
  find "$new" -name __pycache__ -type d -prune -exec rm -rf {} +

  # A venv is only tied to its path through script shebangs, activate scripts and pyvenv.cfg
  # (python finds its site-packages from pyvenv.cfg beside bin/python). Point them at the
  # final path, as dh-virtualenv does, so the tree is right once it sits at $PREFIX.
  local f
  for f in "$new"/bin/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    if head -c 2 "$f" | grep -q '^#!' || [[ "$f" == */activate* ]]; then
      sed -i "s|$new|$PREFIX|g" "$f"
    fi
  done
  sed -i "s|$new|$PREFIX|g" "$new/pyvenv.cfg"
  "$new/bin/python" -m compileall -q -j 0 -s "$new" -p "$PREFIX" "$new/lib" >/dev/null

  # Ship the installer itself, so the .deb's postinst, later reconfiguration and uninstall
  # work without the source tree.
  mkdir -p "$new/share/installer/linux" "$new/share/installer/common"
  install -m 0755 "$SCRIPT_DIR/install.sh" "$SCRIPT_DIR/uninstall.sh" "$new/share/installer/linux/"
  install -m 0644 "$SCRIPT_DIR"/*.service.in "$SCRIPT_DIR"/*.timer.in "$new/share/installer/linux/"
  install -m 0644 "$COMMON_DIR/render_config.py" "$new/share/installer/common/"

  # Before anything is swapped in or configured: the agent's own checks, from the new venv.
  preflight "$new/bin/python" || { rm -rf "$new"; exit 2; }

  [ -f "$final/.install-manifest" ] && cp -p "$final/.install-manifest" "$new/"
  if [ -d "$final" ]; then
    mv "$final" "$old"
    mv "$new" "$final"
    rm -rf "$old"
    note "upgraded the virtual environment in $PREFIX"
  else
    mv "$new" "$final"
    note "created the virtual environment in $PREFIX"
  fi
  record tree "$PREFIX"
}

# ---- the agent's own checks ------------------------------------------------------------------
# The configuration these flags will write, with the inputs where they are now, checked by the
# agent that is being installed: `proscribe agent check` (config, trusted keys, collector URL
# and CA, enroll secret: what `agent run` refuses to start on) and `proscribe policy verify`
# (signatures by the trusted keys, expiry) for --policy. A refusal is the agent's own line.
preflight() {  # preflight PYTHON; prints the refusal and returns 1
  [ "$COMPONENT" = agent ] || return 0
  [ ${#TRUSTED_KEYS[@]} -gt 0 ] || return 0   # not configured yet: installed, not started
  local py=$1 tmp out k args=() trust=()
  tmp=$(mktemp -d)
  args=(agent --platform linux --mode "$MODE" --dns "$DNS" --threshold "$THRESHOLD"
        --state-dir "$tmp/state")
  [ -n "$COLLECTOR_URL" ] && args+=(--collector-url "$COLLECTOR_URL")
  [ -n "$CA_FILE" ] && args+=(--ca-file "$(abs_path "$CA_FILE")")
  if [ -n "$SECRET_FILE" ]; then
    # checked as it will be installed (a 0600 copy); unreadable: the agent's own line says so
    if install -m 0600 "$SECRET_FILE" "$tmp/enroll.secret" 2>/dev/null; then
      args+=(--enroll-secret-file "$tmp/enroll.secret")
    else
      args+=(--enroll-secret-file "$(abs_path "$SECRET_FILE")")
    fi
  fi
  for k in "${TRUSTED_KEYS[@]}"; do args+=(--trusted-key "$k"); trust+=(--trust "$k"); done
  if ! out=$("$py" "$COMMON_DIR/render_config.py" "${args[@]}" -o "$tmp/agent.toml" 2>&1) \
     || ! out=$("$py" -m proscribe.cli agent check --config "$tmp/agent.toml" 2>&1); then
    rm -rf "$tmp"
    out=${out##*$'\n'}
    out=${out//"$tmp/agent.toml: "/}
    echo "$PROG: error: the agent refuses this configuration: ${out#proscribe: error: }" >&2
    return 1
  fi
  if [ -n "$POLICY" ] && ! out=$("$py" -m proscribe.cli policy verify "$POLICY" "${trust[@]}" \
       --threshold "$THRESHOLD" 2>&1); then
    rm -rf "$tmp"
    out=${out##*$'\n'}
    echo "$PROG: error: --policy: the agent refuses it: ${out#proscribe: error: }" >&2
    return 1
  fi
  rm -rf "$tmp"
}
abs_path() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }

# The lock that pins the dependencies: the wheelhouse's copy (build-wheelhouse.sh puts it
# there), else the source tree's requirements/COMPONENT.txt (scripts/lock.sh), else none.
lock_file() {
  if [ -n "$WHEELHOUSE" ]; then
    [ -f "$WHEELHOUSE/requirements.txt" ] && printf '%s' "$WHEELHOUSE/requirements.txt"
    return 0
  fi
  local lock="$SCRIPT_DIR/../../requirements/$COMPONENT.txt"
  [ -f "$lock" ] && printf '%s' "$(cd "$(dirname "$lock")" && pwd)/$(basename "$lock")"
  return 0
}

# ---- configuration -------------------------------------------------------------------------
capabilities() {  # the minimal set for this mode; the unit file explains each one
  local caps="CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH"
  [ "$MODE" = enforce ] && caps="$caps CAP_KILL"
  case "$DNS" in auto|capture) caps="$caps CAP_NET_RAW" ;; esac
  case "$DNS" in auto|proxy) caps="$caps CAP_NET_BIND_SERVICE" ;; esac
  printf '%s' "$caps"
}

copy_input() {  # copy_input SRC DEST MODE [GROUP]
  install -m "$3" "$1" "$(r "$2")"
  [ -z "${4:-}" ] || chgrp "$4" "$(r "$2")" 2>/dev/null || true
  record file "$2"
  note "copied $1 to $2 (mode $3)"
}

render_py() {  # the installed environment's python (relocatable), else the one given
  local py
  py=$(r "$PREFIX")/bin/python
  [ -x "$py" ] || py=$PY
  "$py" "$@"
}
render() { render_py "$COMMON_DIR/render_config.py" "$@"; }

config_args() {  # the render_config.py arguments for this run, in CONFIG_ARGS
  CONFIG_ARGS=()
  if [ "$COMPONENT" = agent ]; then
    CONFIG_ARGS=(agent --platform linux --mode "$MODE" --dns "$DNS" --threshold "$THRESHOLD")
    [ -n "$COLLECTOR_URL" ] && CONFIG_ARGS+=(--collector-url "$COLLECTOR_URL")
    [ -n "$CA_FILE" ] && CONFIG_ARGS+=(--ca-file "$CONF_DIR/ca.pem")
    [ -n "$SECRET_FILE" ] && CONFIG_ARGS+=(--enroll-secret-file "$CONF_DIR/enroll.secret")
    [ -n "$DNS_LISTEN" ] && CONFIG_ARGS+=(--dns-proxy-listen "$DNS_LISTEN")
  else
    CONFIG_ARGS=(collector --platform linux --listen "$LISTEN" --threshold "$THRESHOLD")
    [ -n "$TLS_CERT" ] && CONFIG_ARGS+=(--tls-cert "$CONF_DIR/collector.crt" --tls-key "$CONF_DIR/collector.key")
    [ -n "$BEHIND_PROXY" ] && CONFIG_ARGS+=(--behind-proxy)
    [ -n "$DATABASE_URL" ] && CONFIG_ARGS+=(--database-url "$DATABASE_URL")
  fi
  local k
  for k in ${TRUSTED_KEYS[@]+"${TRUSTED_KEYS[@]}"}; do CONFIG_ARGS+=(--trusted-key "$k"); done
}

write_config() {
  local target
  target=$(r "$CONFIG")
  if [ -e "$target" ] && [ -z "$FORCE_CONFIG" ]; then
    note "kept the existing $CONFIG (pass --force-config to rewrite it from the flags)"
    return
  fi
  local tmp="$target.new"
  render "${CONFIG_ARGS[@]}" -o "$tmp" || { rm -f "$tmp"; die "could not write $CONFIG (see the line above)"; }
  if [ -e "$target" ]; then
    cp -p "$target" "$target.bak"
    note "saved the previous $CONFIG as $CONFIG.bak"
  fi
  mv "$tmp" "$target"
  record file "$CONFIG"
  note "wrote $CONFIG"
}

ensure_service_user() {
  getent passwd "$SERVICE_USER" >/dev/null 2>&1 && return
  if [ -n "$ROOT" ]; then
    note "did not create the system user '$SERVICE_USER' in a staging root (the package must: useradd --system $SERVICE_USER)"
    return
  fi
  useradd --system --no-create-home --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
  record user "$SERVICE_USER"
  note "created the system user '$SERVICE_USER'"
}

render_unit() {  # render_unit NAME: $SCRIPT_DIR/NAME.in -> $UNIT_DIR/NAME
  local tmpl="$SCRIPT_DIR/$1.in" target
  target=$(r "$UNIT_DIR/$1")
  mkdir -p "$(dirname "$target")"
  sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@CONF_DIR@|$CONF_DIR|g" -e "s|@STATE_DIR@|$STATE_DIR|g" \
      -e "s|@CAPABILITIES@|$(capabilities)|g" -e "s|@USER@|${SERVICE_USER:-}|g" \
      -e "s|@STATE_NAME@|${STATE_DIR#/var/lib/}|g" -e "s|@RETENTION@|$RETENTION|g" \
      "$tmpl" >"$target.new"
  chmod 0644 "$target.new"
  mv "$target.new" "$target"
  record file "$UNIT_DIR/$1"
}

write_unit() {
  render_unit "$UNIT"
  if [ -n "$RETENTION" ]; then
    render_unit proscribe-collector-purge.service
    render_unit proscribe-collector-purge.timer
    note "installed proscribe-collector-purge.timer: daily, deletes events older than $RETENTION days"
  fi
  if [ "$COMPONENT" = agent ]; then
    note "installed $UNIT_DIR/$UNIT (capabilities: $(capabilities))"
  else
    note "installed $UNIT_DIR/$UNIT (user $SERVICE_USER, no capabilities)"
  fi
}

configure() {
  make_dir "$CONF_DIR" 0755
  if [ "$COMPONENT" = agent ]; then
    [ -n "$SECRET_FILE" ] && copy_input "$SECRET_FILE" "$CONF_DIR/enroll.secret" 0600
    [ -n "$CA_FILE" ] && copy_input "$CA_FILE" "$CONF_DIR/ca.pem" 0644
    if [ -n "$POLICY" ]; then
      copy_input "$POLICY" "$CONF_DIR/policy.toml" 0644
      copy_input "$POLICY.sig" "$CONF_DIR/policy.toml.sig" 0644
    fi
    # State (spool, agent key, policy state) outlives upgrades and plain uninstalls.
    mkdir -p "$(r "$STATE_DIR")"
    chmod 0700 "$(r "$STATE_DIR")"
    record state "$STATE_DIR"
  else
    ensure_service_user
    [ -n "$TLS_CERT" ] && copy_input "$TLS_CERT" "$CONF_DIR/collector.crt" 0644
    [ -n "$TLS_KEY" ] && copy_input "$TLS_KEY" "$CONF_DIR/collector.key" 0640 "$SERVICE_USER"
    record state "$STATE_DIR"   # systemd's StateDirectory= creates it, owned by the user
  fi
  write_config
  [ "$COMPONENT" = agent ] && read_back_modes
  write_unit
  [ "$COMPONENT" = agent ] && point_resolver
  return 0
}

# The system resolver asks the agent's proxy first and the original servers after it, so
# resolution keeps working if the agent stops (agent/enforce/sinkhole.py has the details).
point_resolver() {
  [ "$POINT_RESOLVER" = 1 ] || return 0
  [ "$DNS" = proxy ] || die "--point-resolver: $CONFIG has sensors.dns = \"$DNS\", not \"proxy\""
  local out
  out=$(render_py - "$(r /etc/resolv.conf)" "$(r "$CONF_DIR/resolv.conf.orig")" \
        "$(r "$CONF_DIR/resolved-dropin.conf")" "$(r "$CONFIG")" <<'PY' 2>&1
import sys, tomllib
from pathlib import Path
from proscribe.agent.enforce.sinkhole import install_resolv_conf, install_resolved_dropin
from proscribe.core.errors import ProscribeError
from proscribe.agent.sensors.dns import parse_host_port
resolv, backup, dropin, config = map(Path, sys.argv[1:5])
listen = tomllib.loads(config.read_text()).get("dns", {}).get("proxy_listen", "127.0.0.1:53")
try:
    proxy = parse_host_port(listen, "dns.proxy_listen")
    if resolv.is_symlink():  # systemd-resolved (or another manager) owns resolv.conf
        install_resolved_dropin(proxy, dropin)
        print("resolved")
    else:
        install_resolv_conf(resolv, proxy, backup)
        print("resolv")
except ProscribeError as err:
    sys.exit(f"--point-resolver: {err}")
PY
  ) || die "${out##*$'\n'}"
  if [ "$out" = resolved ]; then
    # resolved keeps using a server once it failed over, so it gets no fallback; instead the
    # unit puts the drop-in in place when the agent starts and removes it when it stops.
    record file "$CONF_DIR/resolved-dropin.conf"
    local unit_dropin
    unit_dropin=$(r "$UNIT_DIR/$UNIT.d")
    [ -d "$unit_dropin" ] || record dir "$UNIT_DIR/$UNIT.d"
    mkdir -p "$unit_dropin"
    cat >"$unit_dropin/resolver.conf.new" <<UNIT
# Written by install.sh --point-resolver: systemd-resolved asks the agent's DNS proxy while the
# agent runs, and is restored the moment it stops (so a stopped agent never breaks DNS).
[Service]
ExecStartPost=+/bin/sh -c 'mkdir -p /etc/systemd/resolved.conf.d && cp $CONF_DIR/resolved-dropin.conf /etc/systemd/resolved.conf.d/proscribe.conf && systemctl try-restart systemd-resolved'
ExecStopPost=+/bin/sh -c 'rm -f /etc/systemd/resolved.conf.d/proscribe.conf; systemctl try-restart systemd-resolved'
UNIT
    mv "$unit_dropin/resolver.conf.new" "$unit_dropin/resolver.conf"
    record file "$UNIT_DIR/$UNIT.d/resolver.conf"
    note "systemd-resolved will ask the DNS proxy while the agent runs ($UNIT_DIR/$UNIT.d/resolver.conf); it is restored when the agent stops"
  else
    record resolv /etc/resolv.conf
    note "pointed /etc/resolv.conf at the DNS proxy, original servers kept as fallback (original saved as $CONF_DIR/resolv.conf.orig)"
  fi
}

# The unit's capabilities must follow the config that is actually in place, which may be
# an existing one kept across an upgrade rather than the flags of this run.
# Whether it is configured at all follows the config in place too: without a trusted key the
# agent exits at once, so the service is left alone rather than left crash-looping.
read_back_modes() {
  local modes
  modes=$(render_py -c 'import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
print(d.get("agent", {}).get("mode", "enforce"), d.get("sensors", {}).get("dns", "auto"),
      len(d.get("policy", {}).get("trusted_keys", [])))' \
    "$(r "$CONFIG")") || die "$CONFIG: not valid TOML (fix: correct it, or rerun with --force-config)"
  read -r MODE DNS KEY_COUNT <<<"$modes"
}

write_manifest() {
  local target
  target=$(r "$MANIFEST")
  mkdir -p "$(dirname "$target")"
  printf '%s\n' "${ENTRIES[@]}" >"$target.new"
  chmod 0644 "$target.new"
  mv "$target.new" "$target"
}

start_service() {
  local cmds=("systemctl daemon-reload" "systemctl enable $UNIT" "systemctl restart $UNIT")
  if [ "$COMPONENT" = agent ] && [ "${KEY_COUNT:-0}" = 0 ]; then
    NOT_CONFIGURED="$UNIT is installed but NOT enabled or started: $CONFIG has no policy.trusted_keys, and the agent refuses to run without one. Configure it, then start it: $PREFIX/share/installer/linux/install.sh --configure-only --force-config --trusted-key signer.pub [--collector-url … --ca-file … --enroll-secret-file …] (for the .deb: put TRUSTED_KEYS=… and the rest in /etc/default/proscribe and run dpkg-reconfigure proscribe-agent)"
    if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
      systemctl daemon-reload
      systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
    fi
    return
  fi
  local out
  if [ "$COMPONENT" = agent ] && [ -z "$ROOT" ] \
     && ! out=$("$PREFIX/bin/proscribe" agent check --config "$CONFIG" 2>&1); then
    # A config kept from before, which the agent refuses: say why instead of a crash loop.
    NOT_CONFIGURED="$UNIT is installed but NOT started: ${out##*$'\n'}"
    return
  fi
  [ -n "$RETENTION" ] && cmds+=("systemctl enable --now proscribe-collector-purge.timer")
  if [ "$NO_START" = 1 ] || [ -n "$ROOT" ]; then
    local why="--no-start"
    [ -n "$ROOT" ] && why="staging root"
    note "did not touch systemd ($why); to start it: ${cmds[*]/%/;}"
    return
  fi
  # sd_booted(): systemd is PID 1 exactly when this directory exists.
  if [ ! -d /run/systemd/system ]; then
    note "systemd is not running here (PID 1 is $(ps -p 1 -o comm= 2>/dev/null || echo unknown)); start the agent with your init system, or by hand: $PREFIX/bin/proscribe ${COMPONENT} $([ "$COMPONENT" = agent ] && echo run || echo serve) --config $CONFIG"
    return
  fi
  systemctl daemon-reload
  systemctl enable "$UNIT" >/dev/null 2>&1
  systemctl restart "$UNIT"
  note "enabled and (re)started $UNIT (check: systemctl status $UNIT)"
  if [ -n "$RETENTION" ]; then
    systemctl enable --now proscribe-collector-purge.timer >/dev/null 2>&1
    note "enabled proscribe-collector-purge.timer (check: systemctl list-timers)"
  fi
}

# ---- main ----------------------------------------------------------------------------------
# Reject bad configuration flags (keys, URL, threshold) before touching anything.
config_args
if ! validation=$(render "${CONFIG_ARGS[@]}" 2>&1 >/dev/null); then
  die "${validation#render_config.py: error: }"
fi
if [ "$CONFIGURE_ONLY" = 1 ]; then
  [ -x "$(r "$PREFIX")/bin/proscribe" ] || die "--configure-only: $(r "$PREFIX") holds no installation (fix: run without --configure-only)"
  preflight "$(r "$PREFIX")/bin/python" || exit 2
else
  install_venv
fi
configure
write_manifest
start_service

echo "Proscribe $COMPONENT installed${ROOT:+ into staging root $ROOT}:"
printf '  - %s\n' "${DONE[@]}"
echo "  - manifest of installed paths: $MANIFEST (uninstall: $PREFIX/share/installer/linux/uninstall.sh${ROOT:+ --root $ROOT})"
if [ -n "${NOT_CONFIGURED:-}" ]; then echo "NOT STARTED: $NOT_CONFIGURED"; fi
