#!/usr/bin/env bash
# Make sure `redis-server` is on PATH: install Debian's package when missing and possible,
# otherwise say exactly what to install.
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0

echo "redis-server not found; installing Debian's redis-server package..." >&2
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q redis-server >/dev/null 2>&1 \
      || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q redis-server >/dev/null; }
    # The package starts a system-wide server on port 6379; the service does not use it.
    command -v redis-server >/dev/null 2>&1 && exit 0
  fi
fi
cat >&2 <<'MSG'
Could not install redis-server. Install Redis 7 yourself, then run this again:
  Debian/Ubuntu: sudo apt-get install redis-server
  macOS:         brew install redis
Or point REDIS_URL at a Redis you already run.
MSG
exit 1
