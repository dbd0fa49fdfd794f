#!/usr/bin/env bash
# fuzz/run.sh [SECONDS] [TARGET...]: builds the fuzz targets once
# (cargo-fuzz, AddressSanitizer) and runs each for SECONDS (default 60) with
# libFuzzer's -max_total_time, starting from the committed seed corpus
# fuzz/corpus/TARGET/ (read only: new inputs go to fuzz/target/corpus/TARGET/).
# Prints executions and crashes per target; exits 1 if any target crashed,
# leaving the input under fuzz/artifacts/TARGET/ (turn it into a regression
# test in the crate that owns the code).
#
# Stable toolchains only: cargo-fuzz's nightly flags are allowed with
# RUSTC_BOOTSTRAP=1. FUZZ_SANITIZER=none builds without ASan (faster, finds
# only panics). FUZZ_MERGE=1 merges what a run found into the committed corpus
# (libFuzzer -merge=1: only inputs that add coverage; keep it small).
# FUZZ_NO_BUILD=1 runs the binaries already built. FUZZ_PROFILE=dev builds
# without optimisations (a build several times faster, runs several times
# slower: what a 30-second crash check in CI wants; figures come from release).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$PWD/fuzz/target"
sanitizer=${FUZZ_SANITIZER:-address}
profile=${FUZZ_PROFILE:-release}
case "$profile" in
  release) profile_flag=(--release) profile_dir=release ;;
  dev) profile_flag=(--dev) profile_dir=debug ;;
  *) echo "FUZZ_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz --version 0.13.2
fi

# cargo fuzz has no --locked: check first that fuzz/Cargo.lock needs no change.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null
mapfile -t all < <(cargo fuzz list --fuzz-dir fuzz)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if [ "${FUZZ_NO_BUILD:-0}" != 1 ]; then
  echo "== cargo fuzz build -s $sanitizer (${targets[*]})"
  build_started=$(date +%s)
  cargo fuzz build --fuzz-dir fuzz --target-dir "$CARGO_TARGET_DIR" -s "$sanitizer" --codegen-units 16 "${profile_flag[@]}"
  echo "build: $(( $(date +%s) - build_started ))s"
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$CARGO_TARGET_DIR/$triple/$profile_dir"
summary=()
failed=0
for t in "${targets[@]}"; do
  seeds=fuzz/corpus/$t work=$CARGO_TARGET_DIR/corpus/$t artifacts=fuzz/artifacts/$t
  mkdir -p "$seeds" "$work" "$artifacts"
  log=$CARGO_TARGET_DIR/fuzz-$t.log
  max_len=4096
  [ "$t" = deploy_unpack ] && max_len=16384
  echo "== $t: ${secs}s"
  rc=0
  touch "$log.start"
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} "$bin_dir/$t" "$work" "$seeds" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  crashes=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) -newer "$log.start" 2>/dev/null | wc -l || true)
  if [ "$rc" != 0 ]; then
    failed=1
    [ "$crashes" -gt 0 ] || crashes=1
    grep -E -A 30 '^==[0-9]+==|panicked at|SUMMARY|^artifact_prefix|Test unit written' "$log" | head -n 60 || tail -n 40 "$log"
  fi
  summary+=("$(printf '%-22s %12s executions %3s crashes  corpus %s' "$t" "${execs:-?}" "$crashes" "$(find "$work" "$seeds" -type f | wc -l)")")
  if [ "${FUZZ_MERGE:-0}" = 1 ] && [ "$rc" = 0 ]; then
    "$bin_dir/$t" -merge=1 -max_len="$max_len" "$seeds" "$work" >/dev/null 2>&1
  fi
done
echo
echo "== fuzzing summary (${secs}s per target, sanitizer $sanitizer, $profile build)"
printf '%s\n' "${summary[@]}"
exit "$failed"
