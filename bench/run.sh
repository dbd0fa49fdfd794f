#!/usr/bin/env bash
# Runs Steward's benchmarks and prints their figures (JSON, one line each).
# Nothing here asserts: compare the figures with the design targets in the README.
#   bash bench/run.sh                 # agent idle 600 s, ingest 20 s per backend
#   IDLE=60 SECONDS_PER_RUN=10 bash bench/run.sh   # a quicker look
# PostgreSQL: set STEWARD_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres);
# a fresh database is created on that server for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${IDLE:-600}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
AGENTS=${AGENTS:-100}
cargo build --release -q -p steward-agent -p steward-controlplane -p steward-bench
echo "# agent footprint (default checks; RSS after ${IDLE}s streaming to a control plane)"
target/release/bench-agent --rounds 2000 --idle "$IDLE"
echo "# ingest over real mTLS streams, ${AGENTS} simulated agents, SQLite"
target/release/bench-ingest --agents "$AGENTS" --seconds "$SECONDS_PER_RUN"
echo "# ingest over real mTLS streams, ${AGENTS} simulated agents, PostgreSQL"
target/release/bench-ingest --agents "$AGENTS" --seconds "$SECONDS_PER_RUN" --postgres
echo "# dispatch latency, API call -> agent receipt, 100 and 1,000 simulated agents, SQLite"
target/release/bench-dispatch --agents 100,1000 --jobs "${DISPATCH_JOBS:-500}"
echo "# dispatch latency, API call -> agent receipt, 100 and 1,000 simulated agents, PostgreSQL"
target/release/bench-dispatch --agents 100,1000 --jobs "${DISPATCH_JOBS:-500}" --postgres
echo "# job queue: enqueue -> claim -> complete through the store, SQLite"
target/release/bench-queue --jobs "${QUEUE_JOBS:-5000}"
echo "# job queue, PostgreSQL, and a bare SKIP LOCKED loop on the same server"
target/release/bench-queue --jobs "${QUEUE_JOBS:-5000}" --postgres --repeat "${QUEUE_REPEAT:-5}"
echo "# control-plane memory per connected agent and rollout overhead, ${ROLLOUT_AGENTS:-10000} simulated agents, SQLite"
target/release/bench-rollout --agents "${ROLLOUT_AGENTS:-10000}" --hosts "${ROLLOUT_HOSTS:-1000,10000}"
echo "# the same on PostgreSQL"
target/release/bench-rollout --agents "${ROLLOUT_AGENTS:-10000}" --hosts "${ROLLOUT_HOSTS:-1000,10000}" --postgres
echo "# SLO evaluation: 100 SLOs over 10,000 hosts' buckets, one full round (alert evaluator), SQLite then PostgreSQL"
target/release/bench-slo --slos 100 --hosts 10000 --rounds "${EVAL_ROUNDS:-3}"
target/release/bench-slo --slos 100 --hosts 10000 --rounds "${EVAL_ROUNDS:-3}" --postgres
echo "# KPI catalog: one sampling round over 30 days of 1,000 hosts' data, SQLite then PostgreSQL"
target/release/bench-kpi --hosts 1000 --days 30 --rounds "${EVAL_ROUNDS:-3}"
target/release/bench-kpi --hosts 1000 --days 30 --rounds "${EVAL_ROUNDS:-3}" --postgres
