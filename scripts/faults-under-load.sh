#!/usr/bin/env bash
# Runs every fault scenario N times (default 20) while stress-ng keeps both cores busy,
# one scenario at a time, and prints the pass rate of each. A scenario that passes alone
# and fails here has found a race: look at its log under target/faults-under-load/.
#
#   scripts/faults-under-load.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
scripts/setup.sh
if ! command -v stress-ng >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends stress-ng >/dev/null
fi
out=target/faults-under-load
mkdir -p "$out"
# test file : scenario (test function)
scenarios=(
  "faults_redis:redis_down_longer_than_max_poll_interval_then_back_empty_and_resynced"
  "faults_redis:redis_errors_oom_readonly_busy_loading_hold_offsets_and_converge"
  "faults_kafka:the_broker_unreachable_and_back_the_daemon_recovers_without_a_restart"
  "fencing:a_revoked_members_writes_in_flight_never_land_after_the_new_owners"
  "fencing:a_dead_writers_late_bytes_never_land_after_the_new_owners"
  "fencing:a_frozen_member_never_writes_after_it_lost_its_partitions"
  "fencing:a_member_evicted_while_draining_never_writes_after_the_new_owner"
  "acl:a_rebalance_between_two_members_fences_as_the_printed_user"
  "cluster:a_slot_left_half_migrated_does_not_stop_the_writes"
  "cluster:a_reshard_and_a_new_primary_mid_stream_end_with_no_key_wrong"
  "cluster:a_primary_killed_mid_stream_ends_with_no_key_wrong_once_its_replica_took_over"
  "cluster:a_rebalance_between_two_daemons_mid_stream_loses_nothing"
)
for name in $(grep -A1 '#\[tokio::test' tests/faults_process.rs | grep -o 'async fn [a-z_]*' | cut -d' ' -f3); do
  scenarios+=("faults_process:$name")
done
files=$(printf '%s\n' "${scenarios[@]}" | cut -d: -f1 | sort -u | sed 's/^/--test /' | tr '\n' ' ')
# shellcheck disable=SC2086
cargo test --locked --no-run $files >/dev/null 2>&1
stress-ng --cpu 2 --timeout 0 >/dev/null 2>&1 &
hog=$!
trap 'kill $hog 2>/dev/null || true' EXIT
printf '%-80s %s\n' "scenario (under stress-ng --cpu 2)" "passed"
for entry in "${scenarios[@]}"; do
  file="${entry%%:*}"
  test="${entry#*:}"
  pass=0
  for i in $(seq 1 "$runs"); do
    log="$out/$file-$test-$i.log"
    if cargo test --locked -q --test "$file" -- --exact "$test" --test-threads 1 --nocapture >"$log" 2>&1; then
      pass=$((pass + 1))
      rm -f "$log"
    fi
  done
  printf '%-80s %d of %d\n' "$file::$test" "$pass" "$runs"
done
