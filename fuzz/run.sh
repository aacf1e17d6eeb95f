#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 600), two at a time, from
# the seeds in fuzz/seeds/<target> into fuzz/corpus/<target>. A crash stops that target and leaves
# its input in fuzz/artifacts/<target>/; the script then exits 1 and names it.
#   bash fuzz/run.sh                 # all targets, 10 minutes each
#   SECONDS_EACH=60 bash fuzz/run.sh manifest
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-600}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build -O --debug-assertions
mkdir -p fuzz/logs
run() {
  mkdir -p "fuzz/corpus/$1"
  cargo +nightly fuzz run -O --debug-assertions "$1" "fuzz/corpus/$1" "fuzz/seeds/$1" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 > "fuzz/logs/$1.log" 2>&1
  local rc=$?
  echo "$1: exit $rc, $(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$1.log" | grep -o '[0-9]*$') runs, corpus $(ls "fuzz/corpus/$1" | wc -l) inputs"
  return $rc
}
failed=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for t in "${targets[@]:i:2}"; do run "$t" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
done
[ $failed -eq 0 ] || { echo "a target crashed: see fuzz/logs/ and fuzz/artifacts/" >&2; exit 1; }
