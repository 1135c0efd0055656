#!/usr/bin/env bash
# Install the Debian packages that tlsgate's tests and benchmarks use.
#
# Idempotent and quick when there is nothing to do: every package is checked
# with dpkg first, and apt-get (update + install) runs only for what is
# missing. Uses sudo only when not root. Works with no stdin (CI).
#
# The nginx and haproxy packages start their system service when installed on
# a machine with systemd, or with no policy-rc.d that forbids it (nginx's
# postinst then listens on :80; haproxy's runs with Debian's listener-less
# default config). tlsgate's tests and benchmarks start their own instances on free
# loopback ports and never need those, so any system instance that this script
# caused to start is stopped and disabled again. Instances that were there
# before this script ran are left alone (they are someone's choice), only
# reported.
set -euo pipefail

# `--python-venv`: only what `python3 -m venv` needs (Debian splits ensurepip out),
# for `make demo` on a machine that has never run the test set-up.
if [ "${1:-}" = "--python-venv" ]; then
  PACKAGES=(python3-venv)
else
PACKAGES=(
  haproxy        # PROXY-protocol peer; benchmark peer
  nginx-light    # app server in tests; benchmark backend
  libnginx-mod-stream # nginx stream {} (a dynamic module): the L4 peer in make bench
  wrk            # HTTP/1.1 load generator (benchmarks)
  nghttp2-client # h2load (benchmarks)
  curl           # a client, as a user would run one
  openssl        # openssl s_client in tests
  testssl.sh     # make tls-grade: grades a default https listener (scripts/tls_grade.py)
  pebble         # ACME test server; its pebble-challtestsrv is the DNS Pebble resolves with
  bind9          # authoritative DNS taking RFC 2136 updates: dns-01 end to end
  procps         # ps/pgrep, used by tests that watch processes
  iproute2       # ss, ip (network namespaces)
  ca-certificates
  gcc            # mypyc compiles the data plane's hot modules (scripts/compile.py)
  python3-dev    # Python.h for that build
)
fi

# package name -> the system service it installs
declare -A SERVICE_OF=([haproxy]=haproxy [nginx-light]=nginx [bind9]=named)

log() { printf 'install-system-deps: %s\n' "$*"; }

is_installed() {
  # `dpkg -s` also succeeds for a removed package whose config files remain
  # ("deinstall ok config-files"), so ask for the exact state instead.
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  log "this script needs a Debian-based system (dpkg + apt-get); install by hand: ${PACKAGES[*]}" >&2
  exit 1
fi

missing=()
present=()
for pkg in "${PACKAGES[@]}"; do
  if is_installed "$pkg"; then
    present+=("$pkg")
  else
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  log "all ${#PACKAGES[@]} packages already installed, skipped: ${present[*]}"
  exit 0
fi

if [ "${#present[@]}" -gt 0 ]; then
  log "already installed, skipped: ${present[*]}"
fi
log "installing: ${missing[*]}"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    log "not root and sudo is not available; run as root or install: ${missing[*]}" >&2
    exit 1
  fi
  SUDO=(sudo)
fi

apt_get() {
  # `env` rather than `sudo VAR=...`: sudoers may forbid setting variables.
  # The lock timeout waits for a concurrent apt (unattended-upgrades on a
  # fresh machine) instead of failing at once.
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"
}

apt_get update -qq
apt_get install -y -qq --no-install-recommends "${missing[@]}" </dev/null

# Stop and disable the system services of the packages installed just now.
systemd_running=false
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemd_running=true
fi
for pkg in "${missing[@]}"; do
  svc="${SERVICE_OF[$pkg]:-}"
  [ -n "$svc" ] || continue
  if $systemd_running; then
    "${SUDO[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
  else
    "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
    "${SUDO[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
  # Whatever init system there is (or none), a daemon the postinst started
  # writes its pid here; end exactly that process if it is still alive.
  pidfile="/run/$svc.pid"
  if [ -r "$pidfile" ]; then
    pid="$(head -n1 "$pidfile" | tr -dc '0-9')"
    if [ -n "$pid" ] && [ "$(ps -o comm= -p "$pid" 2>/dev/null || true)" = "$svc" ]; then
      "${SUDO[@]}" kill -TERM "$pid" 2>/dev/null || true
    fi
  fi
  log "made sure the system '$svc' service is stopped and disabled (tests run their own)"
done

# Report (never touch) anything else that holds :80 or :443.
if command -v ss >/dev/null 2>&1; then
  busy="$(ss -Hltnp 'sport = :80 or sport = :443' 2>/dev/null || true)"
  if [ -n "$busy" ]; then
    log "note: ports 80/443 are in use on this machine (tests do not need them):"
    printf '%s\n' "$busy" >&2
  fi
fi

log "done"
