#!/usr/bin/env bash
# schemathesis (from PyPI) against a running control plane, using the
# OpenAPI document it serves, with an admin token: no server errors, and
# responses (status, content type, headers, body) that match the document.
# Usage: .ci/schemathesis.sh [DATABASE_URL]   (default: SQLite)
#        .ci/schemathesis.sh --install         (venv and build only)
# Prints one line "schemathesis (BACKEND): N generated, N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=/tmp/steward-schemathesis-venv
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked -q --bin steward-controlplane
# --install: only the venv and the build, so that runs started next in
# parallel (one per backend) share them.
if [ "${1:-}" = --install ]; then
  exit 0
fi
DIR=$(mktemp -d /tmp/steward-schemathesis.XXXXXX)
args=(quickstart --dir "$DIR/qs" --rest-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0)
backend=sqlite
if [ -n "${1:-}" ]; then
  args+=(--database-url "$1")
  backend=postgres
fi
target/debug/steward-controlplane "${args[@]}" >"$DIR/quickstart.log" 2>&1 &
QS_PID=$!
cleanup() {
  kill -INT "$QS_PID" 2>/dev/null || true
  wait "$QS_PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  [ -s "$DIR/qs/quickstart.json" ] && break
  kill -0 "$QS_PID" 2>/dev/null || { cat "$DIR/quickstart.log"; exit 1; }
  sleep 0.5
done
[ -s "$DIR/qs/quickstart.json" ] || { echo "quickstart did not start"; cat "$DIR/quickstart.log"; exit 1; }
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$DIR/qs/quickstart.json" "$1"; }
URL=$(field rest_url)
TOKEN=$(field admin_token)

# Wait until the local agent's host and checks are there, so lists are not empty.
for _ in $(seq 1 60); do
  if curl -fsS -H "Authorization: Bearer $TOKEN" "$URL/api/v1/checks?limit=1" 2>/dev/null | grep -q '"host_id"'; then
    break
  fi
  sleep 0.5
done

# Every check but positive_data_acceptance: selectors, opaque cursors and
# role names are strings whose grammar JSON Schema cannot state, so a
# "schema-valid" random value is rightly refused with a 400.
# --rate-limit stays under the control plane's default per-token limit (50/s).
set +e
(cd "$DIR" && "$VENV/bin/schemathesis" run "$URL/api/v1/openapi.json" \
  -H "Authorization: Bearer $TOKEN" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples 25 --seed 1 --generation-database none \
  --rate-limit 40/s --no-color) >"$DIR/schemathesis.log" 2>&1
rc=$?
set -e
if [ $rc -ne 0 ]; then
  cat "$DIR/schemathesis.log"
fi
summary=$(grep -E '^\s*[0-9]+ generated' "$DIR/schemathesis.log" | tail -n 1 | sed 's/^ *//')
generated=$(echo "$summary" | grep -oE '^[0-9]+' || echo 0)
failed=$(echo "$summary" | grep -oE '[0-9]+ unique failures?' | grep -oE '^[0-9]+' || echo 0)
echo "schemathesis ($backend): ${summary:-no summary}"
echo "schemathesis ($backend): $generated generated, $((generated - failed)) passed, $failed failed"
exit $rc
