#!/usr/bin/env bash
# `make run`: the API and one worker in the foreground; a private redis-server (AOF on, data in
# .data/, or DATA_DIR; maxmemory REDIS_MAXMEMORY, default 256mb, noeviction) when REDIS_URL is
# unset. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
pids=()
redis_pid=""

# Stop the API and the worker first (the worker finishes its job and deregisters), then the
# private Redis they were talking to.
stop_all() {
  # Ignore, not reset: make forwards a SIGTERM to this script a second time, and a second
  # Ctrl-C is common; either would otherwise kill the script before Redis is stopped.
  trap '' INT TERM
  trap - EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
}
trap stop_all INT TERM EXIT

if [ -z "${REDIS_URL:-}" ]; then
  bash scripts/ensure-command.sh redis-server redis-server
  data="${DATA_DIR:-$PWD/.data}"
  mkdir -p "$data"
  sock="$data/redis.sock"
  # In its own session, so that Ctrl-C reaches it only through stop_all, after the others.
  setsid redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 --dir "$data" \
    --appendonly yes --appendfsync everysec --save "" --daemonize no \
    --maxmemory "${REDIS_MAXMEMORY:-256mb}" --maxmemory-policy noeviction \
    --logfile "$data/redis.log" &
  redis_pid=$!
  for _ in $(seq 1 100); do
    redis-cli -s "$sock" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -s "$sock" ping >/dev/null || { echo "redis-server did not start; see $data/redis.log" >&2; exit 1; }
  export REDIS_URL="unix://$sock"
  echo "private redis-server: $REDIS_URL (AOF in $data)"
fi

if [ -z "${API_KEY:-}" ]; then
  API_KEY=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))')
  export API_KEY
  echo "generated API_KEY (set API_KEY to choose your own)"
fi
if [ -z "${DASHBOARD_PASSWORD:-}" ]; then
  DASHBOARD_PASSWORD=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(12))')
  export DASHBOARD_PASSWORD
  echo "generated DASHBOARD_PASSWORD (set DASHBOARD_PASSWORD to choose your own)"
fi
if [ -z "${WEBHOOK_SECRET:-}" ]; then
  WEBHOOK_SECRET=$("$BIN/python" -c 'import base64, os; print("whsec_" + base64.b64encode(os.urandom(32)).decode())')
  export WEBHOOK_SECRET
  echo "generated WEBHOOK_SECRET=$WEBHOOK_SECRET (webhook receivers verify with it; set your own to keep it)"
fi
export PORT="${PORT:-8080}"

# In its own session too: Ctrl-C reaches gunicorn only as stop_all's SIGTERM, its graceful stop
# (a SIGINT straight to gevent workers makes each print a SystemExit traceback as it quits).
setsid "$BIN/gunicorn" 'api:create_app()' &
pids+=($!)
"$BIN/python" -m worker &
pids+=($!)

cat <<MSG

toolkit-jobs is running
  API:      http://127.0.0.1:$PORT (listening on 0.0.0.0:$PORT)
  API key:  $API_KEY
  dashboard: http://127.0.0.1:$PORT/dashboard/ (user ${DASHBOARD_USER:-admin}, password $DASHBOARD_PASSWORD)
  try:      curl -s -X POST http://127.0.0.1:$PORT/v1/toolkit/jobs/status -H "x-api-key: $API_KEY"
Press Ctrl-C to stop.

MSG
# Stop everything as soon as any one process exits.
watched=("${pids[@]}")
[ -z "$redis_pid" ] || watched+=("$redis_pid")
wait -n "${watched[@]}"
