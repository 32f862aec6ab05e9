#!/usr/bin/env bash
# Soak: subscribers that drop and come back with recovery while a publisher runs, against a
# fresh Herald. Passes when nothing was lost or delivered twice, every subscriber caught up,
# the server's memory stayed flat and its file descriptors went back to the baseline.
#
# usage: scripts/soak/reconnect.sh [DURATION_S]      (default 60; the documented run is 1800)
# env:   HERALD_BIN   the herald binary (default target/release/herald, else target/debug/herald)
#        N            subscribers (200)     RATE        publications/s (50)
#        DROP_EVERY   seconds between a subscriber's drops (2)
#        OUT          directory for the samples and the result (a new temporary one)
# Prints the figures and one line "soak reconnect: PASS|FAIL ..."; exits 1 on FAIL.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-60}
N=${N:-200}
RATE=${RATE:-50}
DROP_EVERY=${DROP_EVERY:-2}
BIN=${HERALD_BIN:-}
if [ -z "$BIN" ]; then
  for b in target/release/herald target/debug/herald; do [ -x "$b" ] && { BIN=$b; break; }; done
fi
[ -x "${BIN:-}" ] || { echo "no herald binary: cargo build --release -p herald, or set HERALD_BIN" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d /tmp/herald-soak-XXXXXX)}
mkdir -p "$OUT"
DATA="$OUT/data"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KEY=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)

HERALD_ADMIN_KEY="$KEY" "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" >"$OUT/server.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
  kill -0 "$PID" || { cat "$OUT/server.log" >&2; exit 2; }
  sleep 0.1
done
fds() { ls "/proc/$PID/fd" | wc -l; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
BASE_FDS=$(fds)
echo "t_s,rss_kb,fds" >"$OUT/samples.csv"
echo "0,$(rss),$BASE_FDS" >>"$OUT/samples.csv"

"$BIN" bench recover --url "ws://127.0.0.1:$PORT/ws" --admin-key "$KEY" --server-pid "$PID" \
  -n "$N" --rate "$RATE" --duration "$DURATION" --drop-every "$DROP_EVERY" \
  --channel soak --max-seconds $((DURATION + 120)) --quiet >"$OUT/result.json" 2>"$OUT/bench.log" &
BENCH=$!
START=$(date +%s)
INTERVAL=$(( DURATION >= 300 ? 30 : 5 ))
while kill -0 "$BENCH" 2>/dev/null; do
  sleep "$INTERVAL"
  kill -0 "$PID" || { echo "soak reconnect: FAIL: the server died" ; exit 1; }
  echo "$(( $(date +%s) - START )),$(rss),$(fds)" >>"$OUT/samples.csv"
done
BENCH_RC=0; wait "$BENCH" || BENCH_RC=$?
# The bench's connections are closed; give the server a moment to let go of them.
END_FDS=$(fds)
for _ in $(seq 50); do
  END_FDS=$(fds); [ "$END_FDS" -le $((BASE_FDS + 2)) ] && break; sleep 0.2
done
echo "end,$(rss),$END_FDS" >>"$OUT/samples.csv"

python3 - "$OUT" "$DURATION" "$BASE_FDS" "$END_FDS" "$BENCH_RC" <<'PY'
import json, sys
out, duration, base_fds, end_fds, rc = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
try:
    r = json.load(open(f"{out}/result.json"))
except Exception as e:
    print(f"soak reconnect: FAIL: no result from the bench ({e}); see {out}/bench.log"); sys.exit(1)
rows = [l.strip().split(",") for l in open(f"{out}/samples.csv").read().splitlines()[1:]]
during = [(float(t), int(kb)) for t, kb, _ in rows if t != "end" and float(t) <= duration]
# Memory: from a quarter of the run (everything warmed up) to its end.
warm = [kb for t, kb in during if t >= duration / 4] or [kb for _, kb in during]
first, last, peak = warm[0], warm[-1], max(kb for _, kb in during)
growth = last - first
problems = []
for key in ("lost", "duplicates", "recover_failed"):
    if r.get(key) != 0:
        problems.append(f"{key}={r.get(key)}")
if r.get("caught_up") != r.get("subscribed"):
    problems.append(f"caught_up={r.get('caught_up')} of {r.get('subscribed')}")
if not r.get("published_ok"):
    problems.append("nothing published")
if growth > max(4096, first // 10):
    problems.append(f"RSS grew {growth} kB from {first} kB")
if end_fds > base_fds + 2:
    problems.append(f"fds {end_fds} at the end, {base_fds} at the start")
if rc != 0:
    problems.append(f"bench exit {rc}")
print(f"published {r.get('published_ok')}, received {r.get('received')}/{r.get('expected')}, "
      f"lost {r.get('lost')}, duplicates {r.get('duplicates')}, drops {r.get('drops')}, "
      f"recovered {r.get('recovered')}, recover_failed {r.get('recover_failed')}, "
      f"caught_up {r.get('caught_up')}/{r.get('subscribed')}")
print(f"server RSS kB: start {during[0][1]}, at {duration/4:.0f} s {first}, end {last}, peak {peak}; "
      f"fds: start {base_fds}, end {end_fds}; samples in {out}/samples.csv")
print(("soak reconnect: FAIL: " + "; ".join(problems)) if problems else
      f"soak reconnect: PASS ({duration:.0f} s, {r.get('subscribed')} subscribers)")
sys.exit(1 if problems else 0)
PY
