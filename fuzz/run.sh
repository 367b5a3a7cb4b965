#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: bash fuzz/run.sh [seconds per target].
# Needs cargo-fuzz (cargo install cargo-fuzz). Builds without a sanitizer, so it
# runs on the stable toolchain: the fuzzed crates forbid unsafe code, so what is
# looked for is panics, failed invariants, timeouts and runaway memory, which
# libFuzzer catches by itself. The committed seeds (fuzz/corpus, written by
# fuzz/seeds.py) are read, not changed; what a run learns goes to a scratch
# corpus. A crash leaves its input under fuzz/artifacts/<target>/ and fails.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
cargo fuzz build -s none
for target in request auth records wal_recovery; do
  scratch="$(mktemp -d)"
  echo "fuzz: $target for ${seconds}s"
  # -rss_limit_mb: a leak or an unbounded allocation fails the run; -timeout: so does a hang.
  # The fuzzer's own exit status decides; grep only shortens the output. (With
  # pipefail on, `... | grep || true` would reset PIPESTATUS and hide a crash.)
  set +e
  cargo fuzz run -s none "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)|#[0-9]+\s+INITED|panicked|ERROR|SUMMARY|Test unit written'
  fuzzed=${PIPESTATUS[0]}
  set -e
  test "$fuzzed" -eq 0 || { echo "fuzz: $target FAILED; see fuzz/artifacts/$target/"; exit 1; }
  rm -rf "$scratch"
done
