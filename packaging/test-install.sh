#!/usr/bin/env bash
# The install / upgrade / remove / purge cycle of the two .deb packages on
# this machine, as CI runs it (root, dpkg; systemd need not be running):
# files, owners and modes, conffiles, the example configs, the units
# (systemd-analyze verify and security), the restore drill, then what
# `dpkg -r` keeps and what `dpkg -P` leaves behind.
#
#   sudo bash packaging/test-install.sh [DEB_DIR]     # default target/debian
set -euo pipefail
cd "$(dirname "$0")/.."
DEB_DIR=${1:-target/debian}
[ "$(id -u)" = 0 ] || { echo "test-install.sh: run as root (it installs packages)" >&2; exit 2; }
agent_deb=$(ls "$DEB_DIR"/steward-agent_*_amd64.deb | sort -V | tail -n 1)
cp_deb=$(ls "$DEB_DIR"/steward-controlplane_*_amd64.deb | sort -V | tail -n 1)

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
# expect_stat PATH "OWNER:GROUP MODE"
expect_stat() {
  [ -e "$1" ] || fail "$1 is missing"
  local got; got=$(stat -c '%U:%G %a' "$1")
  [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
  ok "$1 $got"
}
expect_absent() { if [ -e "$1" ] || [ -L "$1" ]; then fail "$1 is still there"; fi; ok "$1 is gone"; }
units=(/usr/lib/systemd/system/steward-agent.service /usr/lib/systemd/system/steward-controlplane.service)

echo "== clean slate"
dpkg -P steward-agent steward-controlplane >/dev/null 2>&1 || true

echo "== dpkg -i $agent_deb $cp_deb"
dpkg -i "$agent_deb" "$cp_deb"
for p in steward-agent steward-controlplane; do
  [ "$(dpkg-query -W -f '${db:Status-Abbrev}' "$p")" = "ii " ] || fail "$p is not installed"
done

echo "== files, owners, modes"
for f in /usr/bin/steward-agent /usr/bin/steward-controlplane /usr/bin/stewardctl; do expect_stat "$f" "root:root 755"; done
expect_stat /etc/steward/agent.toml "root:root 644"
expect_stat /etc/steward/controlplane.toml "root:steward 640"
expect_stat /etc/default/steward-agent "root:root 644"
expect_stat /etc/default/steward-controlplane "root:root 644"
for u in "${units[@]}"; do expect_stat "$u" "root:root 644"; done
expect_stat /var/lib/steward-agent "root:root 700"
expect_stat /var/lib/steward-controlplane "steward:steward 700"
expect_stat /var/lib/steward-controlplane/ca.key "steward:steward 600"
expect_stat /var/lib/steward-controlplane/ca.pem "steward:steward 644"
expect_stat /var/lib/steward-controlplane/server.key "steward:steward 600"
expect_stat /var/lib/steward-controlplane/server.pem "steward:steward 644"
for m in steward-agent steward-controlplane stewardctl; do expect_stat "/usr/share/man/man1/$m.1.gz" "root:root 644"; done
entry=$(getent passwd steward) || fail "no steward user"
case "$entry" in *:/var/lib/steward-controlplane:/usr/sbin/nologin) ok "user: $entry" ;; *) fail "user: $entry" ;; esac
[ "$(id -u steward)" -lt 1000 ] || fail "steward is not a system user"
for c in /etc/steward/agent.toml /etc/default/steward-agent; do
  dpkg-query -W -f '${Conffiles}\n' steward-agent | grep -q " $c " || fail "$c is not a conffile"
done
for c in /etc/steward/controlplane.toml /etc/default/steward-controlplane; do
  dpkg-query -W -f '${Conffiles}\n' steward-controlplane | grep -q " $c " || fail "$c is not a conffile"
done
ok "conffiles"
for u in steward-agent steward-controlplane; do
  [ -L "/etc/systemd/system/multi-user.target.wants/$u.service" ] || fail "$u.service is not enabled"
done
ok "both units enabled"

echo "== the installed binaries and example configs"
steward-agent --config /etc/steward/agent.toml check-config
runuser -u steward -- steward-controlplane --config /etc/steward/controlplane.toml check-config
steward-agent version | grep -Eq '^steward-agent [0-9.]+ \(commit ([0-9a-f]{7,}|unknown)\)$' || fail "steward-agent version"
steward-controlplane version | grep -Eq '^steward-controlplane [0-9.]+ \(commit ([0-9a-f]{7,}|unknown)\)$' ||
  fail "steward-controlplane version"
steward-agent version
stewardctl --help >/dev/null

echo "== systemd units"
systemd-analyze verify "${units[@]}"
ok "systemd-analyze verify"
for u in "${units[@]}"; do
  score=$(systemd-analyze security --offline=yes "$u" 2>/dev/null | sed -n 's/^→ Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  echo "exposure $(basename "$u"): $score"
  [ -n "$score" ] || fail "no exposure score for $u"
done
cp_score=$(systemd-analyze security --offline=yes "${units[1]}" 2>/dev/null | sed -n 's/^→ Overall exposure level for .*: \([0-9.]*\).*/\1/p')
awk -v s="$cp_score" 'BEGIN { exit !(s <= 2.0) }' || fail "control plane exposure $cp_score > 2.0"
agent_score=$(systemd-analyze security --offline=yes "${units[0]}" 2>/dev/null | sed -n 's/^→ Overall exposure level for .*: \([0-9.]*\).*/\1/p')
awk -v s="$agent_score" 'BEGIN { exit !(s <= 3.0) }' || fail "agent exposure $agent_score > 3.0 (README explains 2.3)"

echo "== the restore drill (docs/RUNBOOK.md) with the installed binaries"
bash packaging/restore-drill.sh

echo "== upgrade (reinstall): data and edited config are kept"
ca_before=$(sha256sum /var/lib/steward-controlplane/ca.pem)
echo "# edited by the operator" >> /etc/steward/agent.toml
touch /var/lib/steward-agent/marker
dpkg -i "$agent_deb" "$cp_deb"
grep -q "edited by the operator" /etc/steward/agent.toml || fail "the edited conffile was replaced"
[ -e /var/lib/steward-agent/marker ] || fail "agent data lost on upgrade"
[ "$(sha256sum /var/lib/steward-controlplane/ca.pem)" = "$ca_before" ] || fail "the CA changed on upgrade"
expect_stat /etc/steward/controlplane.toml "root:steward 640"
ok "upgrade keeps config and data"

echo "== dpkg -r: programs go, config and data stay"
dpkg -r steward-agent steward-controlplane
for f in /usr/bin/steward-agent /usr/bin/steward-controlplane /usr/bin/stewardctl "${units[@]}"; do expect_absent "$f"; done
for f in /etc/steward/agent.toml /etc/steward/controlplane.toml /var/lib/steward-agent/marker \
  /var/lib/steward-controlplane/ca.key; do
  [ -e "$f" ] || fail "$f was removed by dpkg -r"
  ok "$f kept"
done
for p in steward-agent steward-controlplane; do
  [ "$(dpkg-query -W -f '${db:Status-Abbrev}' "$p")" = "rc " ] || fail "$p is not in state rc"
done

echo "== dpkg -P: everything but the system user goes"
dpkg -P steward-agent steward-controlplane
for f in /etc/steward /etc/default/steward-agent /etc/default/steward-controlplane /var/lib/steward-agent \
  /var/lib/steward-controlplane /etc/systemd/system/multi-user.target.wants/steward-agent.service \
  /etc/systemd/system/multi-user.target.wants/steward-controlplane.service \
  /etc/systemd/system/steward-agent.service /etc/systemd/system/steward-controlplane.service; do
  expect_absent "$f"
done
if dpkg-statoverride --list /etc/steward/controlplane.toml >/dev/null; then fail "statoverride left behind"; fi
ok "no statoverride left"
getent passwd steward >/dev/null || fail "the steward user should stay (see README)"
ok "the steward system user stays, by design"
for p in steward-agent steward-controlplane; do
  st=$(dpkg-query -W -f '${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  case "$st" in ii* | rc*) fail "$p is still $st" ;; esac
done
echo "packaging: install, upgrade, remove and purge all passed"
