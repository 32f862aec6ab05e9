#!/usr/bin/env bash
# Builds Herald's fuzz targets (fuzz/, cargo-fuzz on the nightly toolchain) and runs each for a
# while from its seed corpus; fails if any target finds a crash. docs/conformance.md, "Fuzzing".
#
#   scripts/fuzz.sh [target...]       all targets when none is named
#
# Environment:
#   FUZZ_SECONDS   time per target (default 10)
#   FUZZ_JOBS      targets run at once (default 1)
#   FUZZ_OUT       where grown corpora, crash artifacts and logs go, per target
#                  (default: a temporary directory, removed at the end when nothing crashed)
#   FUZZ_MODE      "quick": a development build without a sanitizer, fast to build (CI);
#                  "full": release with debug assertions and AddressSanitizer, as
#                  `cargo fuzz run` builds by default (long runs). Default: quick.
#   FUZZ_NICE      nice level of the fuzzers (default 0)
#   FUZZ_PIDS      a file listing "<pid> <target>" for each fuzzer while it runs, and
#                  "<pid> driver" for this script (so that somebody else can pause the
#                  fuzzers with SIGSTOP during a benchmark, and SIGCONT them after)
#   FUZZ_ARGS      more libFuzzer flags
# Seeds (fuzz/corpus/<target>) are only read; new inputs go to $FUZZ_OUT/<target>/corpus.
set -euo pipefail
# All in one function, read whole before it runs: editing this file does not disturb a run
# in progress (long runs last hours).
main() {
  cd "$(dirname "$0")/.."
  export CARGO_TERM_COLOR=never

  seconds=${FUZZ_SECONDS:-10}
  jobs=${FUZZ_JOBS:-1}
  mode=${FUZZ_MODE:-quick}
  niceness=${FUZZ_NICE:-0}

  if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
  fi
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
  fi

  case "$mode" in
    quick) build_flags=(--dev --sanitizer none) ; profile=debug ;;
    full) build_flags=() ; profile=release ;;
    *) echo "FUZZ_MODE is quick or full" >&2; exit 2 ;;
  esac

  targets=("$@")
  if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
  fi

  started=$(date +%s)
  echo "== building ${#targets[@]} fuzz targets ($mode)"
  cargo +nightly fuzz build "${build_flags[@]}"
  built=$(date +%s)
  echo "built in $((built - started)) s"

  target_dir=${CARGO_TARGET_DIR:-$PWD/fuzz/target}
  bin_dir="$target_dir/x86_64-unknown-linux-gnu/$profile"

  if [ -n "${FUZZ_OUT:-}" ]; then
    out=$FUZZ_OUT
    keep=1
  else
    out=$(mktemp -d "${TMPDIR:-/tmp}/herald-fuzz.XXXXXX")
    keep=0
  fi
  mkdir -p "$out"

  # One target: its grown corpus first (libFuzzer adds to the first directory), then the seeds.
  run_one() {
    local t=$1 dir="$out/$1"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    local log="$dir/fuzz-$(date +%Y%m%d-%H%M%S).log"
    # shellcheck disable=SC2086
    nice -n "$niceness" "$bin_dir/$t" \
      -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$dir/artifacts/" ${FUZZ_ARGS:-} \
      "$dir/corpus" "fuzz/corpus/$t" >"$log" 2>&1 &
    local pid=$!
    if [ -n "${FUZZ_PIDS:-}" ]; then echo "$pid $t" >>"$FUZZ_PIDS"; fi
    local rc=0
    wait "$pid" || rc=$?
    if [ -n "${FUZZ_PIDS:-}" ]; then sed -i "/^$pid /d" "$FUZZ_PIDS" 2>/dev/null || true; fi
    local line
    line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    if [ "$rc" -eq 0 ]; then
      echo "ok     $t: ${line:-no final stats}"
    else
      echo "CRASH  $t (exit $rc): see $log and $dir/artifacts/"
      grep -m1 -A3 -E 'panicked at|ERROR: ' "$log" | sed 's/^/       /' || true
    fi
    return "$rc"
  }

  echo "== running each for ${seconds} s, $jobs at a time (output in $out)"
  if [ -n "${FUZZ_PIDS:-}" ]; then echo "$$ driver" >>"$FUZZ_PIDS"; fi
  failed=()
  pids=()
  names=()
  for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    names+=("$t")
    if [ ${#pids[@]} -ge "$jobs" ]; then
      wait "${pids[0]}" || failed+=("${names[0]}")
      pids=("${pids[@]:1}")
      names=("${names[@]:1}")
    fi
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
  done

  if [ -n "${FUZZ_PIDS:-}" ]; then sed -i "/^$$ driver$/d" "$FUZZ_PIDS" 2>/dev/null || true; fi
  echo "fuzzed in $(($(date +%s) - built)) s ($(($(date +%s) - started)) s with the build)"
  if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]} (artifacts kept in $out)"
    exit 1
  fi
  if [ "$keep" -eq 0 ]; then rm -rf "$out"; fi
  echo "no crash"
}

main "$@"
exit $?
