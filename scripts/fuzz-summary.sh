#!/usr/bin/env bash
# Summarises the fuzz runs that scripts/fuzz.sh logged under a directory (its FUZZ_OUT;
# default /work/fuzz-runs): per target and run, whether it is done or still going, its wall
# time, executions, speed, coverage, corpus, peak memory and crashes (crash, oom, timeout and
# leak artifacts written since the run started; a "slow-unit" is not one: a fuzzer paused with
# SIGSTOP reports the input it was on as slow). docs/conformance.md, "Fuzzing".
#
#   scripts/fuzz-summary.sh [dir]
set -euo pipefail
dir=${1:-/work/fuzz-runs}
now=$(date +%s)

printf '| target | state | wall time | executions | exec/s | cov | ft | corpus | peak RSS | crashes |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
for log in "$dir"/*/fuzz-*.log; do
  [ -e "$log" ] || continue
  target=$(basename "$(dirname "$log")")
  # The run's start, from the log's name (fuzz-YYYYmmdd-HHMMSS.log).
  stamp=$(basename "$log" .log)
  stamp=${stamp#fuzz-}
  start=$(date -d "${stamp:0:8} ${stamp:9:2}:${stamp:11:2}:${stamp:13:2}" +%s 2>/dev/null || echo "$now")
  # The last status line: "#N DONE|pulse|NEW|REDUCE cov: C ft: F corp: K/S lim: L exec/s: E rss: RMb".
  last=$(grep -aE '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1 || true)
  runs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([^ ]+).*/\1/p' <<<"$last")
  if grep -aqE '^#[0-9]+[[:space:]]+DONE' "$log"; then
    state=done
    secs=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -1)
    speed=$(sed -nE 's/^stat::average_exec_per_sec:[[:space:]]*([0-9]+).*/\1/p' "$log" | tail -1)
    rss=$(sed -nE 's/^stat::peak_rss_mb:[[:space:]]*([0-9]+).*/\1/p' "$log" | tail -1)
  elif grep -aqE 'panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)' "$log"; then
    state=crashed
    secs=$(($(stat -c %Y "$log") - start))
    speed=""
    rss=$(sed -nE 's/.* rss: ([0-9]+)Mb.*/\1/p' <<<"$last")
  else
    state=running
    secs=$((now - start))
    speed=""
    rss=$(sed -nE 's/.* rss: ([0-9]+)Mb.*/\1/p' <<<"$last")
  fi
  secs=${secs:-0}
  [ -n "$speed" ] || speed=$(( ${runs:-0} / (secs > 0 ? secs : 1) ))
  crashes=$(find "$dir/$target/artifacts" -maxdepth 1 -type f \
    \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) \
    -newermt "@$start" 2>/dev/null | wc -l)
  if [ "$state" = crashed ] && [ "$crashes" -eq 0 ]; then crashes="1 (see log)"; fi
  printf '| %s | %s | %dm%02ds | %s | %s | %s | %s | %s | %s | %s |\n' \
    "$target" "$state" $((secs / 60)) $((secs % 60)) "${runs:-0}" "$speed" \
    "${cov:--}" "${ft:--}" "${corp:--}" "${rss:+${rss} MB}" "$crashes"
done
if [ -s "$dir/pids" ]; then
  echo
  echo "still running (pid target), from $dir/pids:"
  sed 's/^/  /' "$dir/pids"
fi
