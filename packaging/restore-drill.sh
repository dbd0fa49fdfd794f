#!/usr/bin/env bash
# The restore drill of docs/RUNBOOK.md ("Backup and restore of the control
# plane"), with the installed packages and without systemd: a control plane
# run as the steward user with an agent streaming to it is backed up live,
# stopped, its database lost, the backup restored with the runbook's
# `install` line, and started again; the host and its results must be there
# and the agent's new results must arrive.
#
# It uses its own data directory, config and free ports (never the
# installed /var/lib/steward-controlplane). Needs root and the steward user.
#
#   sudo bash packaging/restore-drill.sh
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "restore-drill.sh: run as root" >&2; exit 2; }
getent passwd steward >/dev/null || { echo "restore-drill.sh: no steward user: install steward-controlplane first" >&2; exit 2; }

work=$(mktemp -d /tmp/steward-drill.XXXXXX)
chmod 0755 "$work"
cp_pid="" agent_pid=""
cleanup() {
  for pid in $agent_pid $cp_pid; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "--- control plane log" >&2; tail -n 30 "$work/cp.log" >&2 || true
  echo "--- agent log" >&2; tail -n 30 "$work/agent.log" >&2 || true
  exit 1
}
# until SECONDS_MAX COMMAND...: retries COMMAND every 0.2 s.
until_ok() {
  local max=$1; shift
  local deadline=$((SECONDS + max))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

data="$work/cp"
install -d -o steward -g steward -m 0700 "$data"
grpc_port=$(free_port)
rest_port=$(free_port)
cfg="$work/controlplane.toml"
cat >"$cfg" <<EOF
data_dir = "$data"

[grpc]
listen = "127.0.0.1:$grpc_port"

[rest]
listen = "127.0.0.1:$rest_port"
EOF
chmod 0644 "$cfg"
as_steward() { runuser -u steward -- "$@"; }
as_steward steward-controlplane --config "$cfg" ca init >/dev/null
as_steward steward-controlplane --config "$cfg" ca issue-server --name localhost >/dev/null
token=$(as_steward steward-controlplane --config "$cfg" admin create-token --name drill 2>/dev/null)
export STEWARD_SERVER="http://127.0.0.1:$rest_port" STEWARD_TOKEN="$token"

start_cp() {
  # setpriv execs (runuser would stay in between and turn SIGTERM into SIGKILL).
  setpriv --reuid steward --regid steward --init-groups -- steward-controlplane --config "$cfg" serve >>"$work/cp.log" 2>&1 &
  cp_pid=$!
  until_ok 60 stewardctl hosts list || fail "the control plane did not get ready"
}
stop() { # PID: SIGTERM, expect exit 0
  kill -TERM "$1"
  local status=0
  wait "$1" || status=$?
  [ "$status" = 0 ] || fail "process $1 exited $status after SIGTERM"
}
start_cp

agent_dir="$work/agent"
# As the control plane's user: the certificate is recorded in its database.
install -d -o steward -g steward -m 0700 "$work/identity"
as_steward steward-controlplane --config "$cfg" ca issue-agent --host drill-01 --out "$work/identity" >/dev/null
install -d -m 0700 "$agent_dir"
install -m 0600 "$work/identity/agent.key" "$agent_dir/"
install -m 0644 "$work/identity/agent.pem" "$work/identity/ca.pem" "$agent_dir/"
cat >"$work/agent.toml" <<EOF
[agent]
data_dir = "$agent_dir"
heartbeat_interval = "2s"

[server]
url = "https://localhost:$grpc_port"
reconnect_max = "1s"

[[checks]]
name = "memory"
kind = "memory"
interval = "1s"

[[checks]]
name = "load"
kind = "cpu"
interval = "1s"
EOF
steward-agent --config "$work/agent.toml" run >>"$work/agent.log" 2>&1 &
agent_pid=$!

has_checks() { [ "$(stewardctl -o json checks list --host drill-01 | grep -o '"status"' | wc -l)" -ge 2 ]; }
until_ok 60 has_checks || fail "no results from drill-01"
echo "drill: agent drill-01 reports; backing up the live control plane"

backup="$work/steward-backup.db"
steward-controlplane --config "$cfg" backup --to "$backup"
[ "$(stat -c %a "$backup")" = 600 ] || fail "the backup is not 0600"
if steward-controlplane --config "$cfg" backup --to "$backup" 2>/dev/null; then fail "a backup overwrote $backup"; fi

echo "drill: stopping, losing the database, restoring"
stop "$agent_pid"; agent_pid=""
stop "$cp_pid"; cp_pid=""
(cd "$data" && mkdir -p broken && mv steward.db steward.db-wal steward.db-shm broken/ 2>/dev/null || true)
[ ! -e "$data/steward.db" ] || fail "the database is still there"
install -o steward -g steward -m 0600 "$backup" "$data/steward.db"
start_cp

stewardctl hosts list | grep -q drill-01 || fail "drill-01 is not back after the restore"
has_checks || fail "drill-01's results are not back after the restore"
before=$(stewardctl -o json hosts show drill-01 | tr -d ' \n' | grep -o '"last_seen_ms":[0-9]*' | head -n 1)
steward-agent --config "$work/agent.toml" run >>"$work/agent.log" 2>&1 &
agent_pid=$!
advanced() {
  local now
  now=$(stewardctl -o json hosts show drill-01 | tr -d ' \n' | grep -o '"last_seen_ms":[0-9]*' | head -n 1)
  [ -n "$now" ] && [ "$now" != "$before" ]
}
until_ok 60 advanced || fail "the agent did not carry on after the restore"
stop "$agent_pid"; agent_pid=""
stop "$cp_pid"; cp_pid=""
echo "drill: restored control plane has drill-01 and its results; the agent carries on"
