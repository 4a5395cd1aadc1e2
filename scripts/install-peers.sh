#!/usr/bin/env bash
# Install the external WebSocket peers used by wsloop's interoperability tests into local,
# git-ignored folders:
#   tests/peers/.venv          Python venv with the pinned `websockets` (tests/peers/requirements.txt)
#   tests/peers/node_modules   Node `ws`, by `npm ci` from tests/peers/package-lock.json
#
# usage: scripts/install-peers.sh [python|node|all]     (default: all)
#
# Idempotent and fast when already installed: each part writes a stamp (a hash of its pinned
# requirements and of the interpreter's version) after a successful install and is skipped while
# the stamp matches. Safe when several test binaries run it at once: everything happens under an
# exclusive flock. Exits non-zero with a message on stderr if anything fails.
set -euo pipefail

what="${1:-all}"
case "$what" in
  python | node | all) ;;
  -h | --help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "install-peers.sh: unknown argument '$what' (expected python, node or all)" >&2
    exit 2
    ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peers="$root/tests/peers"

die() {
  echo "install-peers.sh: error: $*" >&2
  exit 1
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH: $2"
}

need flock "it is part of util-linux (apt-get install util-linux)"
need sha256sum "it is part of coreutils"

# The lock lives outside the work tree (nothing to git-ignore), one per checkout.
lock="${TMPDIR:-/tmp}/wsloop-install-peers-$(printf '%s' "$root" | sha256sum | cut -c1-16).lock"
exec 9>"$lock" || die "cannot open lock file $lock"
if ! flock -w 600 9; then
  die "timed out after 600 s waiting for another install-peers.sh (lock $lock)"
fi

# Network steps are bounded so that nothing can hang forever.
net_timeout=600

install_python() {
  need python3 "install Python 3.8+ (apt-get install python3 python3-venv)"
  local venv="$peers/.venv"
  local stamp="$venv/.wsloop-peers-stamp"
  local want
  want="$( (python3 --version 2>&1; cat "$peers/requirements.txt") | sha256sum | cut -c1-64)"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  echo "install-peers.sh: creating $venv and installing $(grep -v '^#' "$peers/requirements.txt" | xargs)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" ||
    die "python3 -m venv $venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
  timeout "$net_timeout" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$peers/requirements.txt" >&2 ||
    die "pip install -r tests/peers/requirements.txt failed (is PyPI reachable?)"
  "$venv/bin/python" -c 'import websockets' ||
    die "the venv at $venv cannot import websockets after installing it"
  printf '%s' "$want" >"$stamp"
}

install_node() {
  need node "install Node.js 18+ with npm"
  need npm "install npm (it comes with Node.js)"
  local modules="$peers/node_modules"
  local stamp="$modules/.wsloop-peers-stamp"
  local want
  want="$( (node --version; cat "$peers/package.json" "$peers/package-lock.json") | sha256sum | cut -c1-64)"
  if [[ -f "$modules/ws/package.json" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  echo "install-peers.sh: installing ws into $modules (npm ci)" >&2
  (cd "$peers" && timeout "$net_timeout" npm ci --no-audit --no-fund --loglevel=error >&2) ||
    die "npm ci in tests/peers failed (is the npm registry reachable?)"
  (cd "$peers" && node -e 'require("ws")') ||
    die "node cannot load ws from $modules after npm ci"
  printf '%s' "$want" >"$stamp"
}

if [[ "$what" == python || "$what" == all ]]; then
  install_python
fi
if [[ "$what" == node || "$what" == all ]]; then
  install_node
fi
