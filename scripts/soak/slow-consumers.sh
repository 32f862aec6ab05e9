#!/usr/bin/env bash
# Slow-consumer storm: STALLED WebSocket readers that never read, on the channel healthy
# subscribers follow, while a publisher sends large messages. Passes when the healthy
# subscribers lost nothing, every stalled reader was closed as a slow consumer, the server's
# memory stayed under its bound (baseline + STALLED x outbox limit) and the server's sockets to
# the stalled readers were gone from the kernel within 5 s of the storm (no send queue kept
# for a peer that takes nothing). The healthy subscribers' latency, with and without the
# storm, is reported (not judged: a shared 2-core machine).
#
# Each stalled reader's kernel send buffer is bounded by websocket.send_buffer_bytes (128 KiB,
# doubled by the kernel), so each reaches the outbox limit within a few messages. With
# HERALD_WEBSOCKET__SEND_BUFFER_BYTES=0 (the kernel's sizing) the kernel holds up to 1.6 MB of
# the run per stalled reader instead: fewer than about 1000 then never reach the outbox limit
# (the check reports it), and 2000 push TCP into memory pressure, which slows the healthy ones.
#
# usage: scripts/soak/slow-consumers.sh            env: HERALD_BIN, STALLED (2000),
#        HEALTHY (200), OUTBOX (262144 bytes), OUT (a new temporary directory)
set -euo pipefail
cd "$(dirname "$0")/../.."
STALLED=${STALLED:-2000}
HEALTHY=${HEALTHY:-200}
OUTBOX=${OUTBOX:-262144}
BIN=${HERALD_BIN:-}
if [ -z "$BIN" ]; then
  for b in target/release/herald target/debug/herald; do [ -x "$b" ] && { BIN=$b; break; }; done
fi
[ -x "${BIN:-}" ] || { echo "no herald binary: cargo build --release -p herald, or set HERALD_BIN" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d /tmp/herald-storm-XXXXXX)}
mkdir -p "$OUT"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KEY=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
ulimit -n 20000 2>/dev/null || true

HERALD_ADMIN_KEY="$KEY" HERALD_WEBSOCKET__OUTBOX_MAX_BYTES="$OUTBOX" \
  "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$OUT/data" >"$OUT/server.log" 2>&1 &
PID=$!
STORM=""
cleanup() {
  [ -n "$STORM" ] && kill "$STORM" 2>/dev/null || true
  kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
  kill -0 "$PID" || { cat "$OUT/server.log" >&2; exit 2; }
  sleep 0.1
done
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
stats() { curl -s -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/api/v1/stats"; }
healthy() { # label
  "$BIN" bench fanout --url "ws://127.0.0.1:$PORT/ws" --admin-key "$KEY" --server-pid "$PID" \
    -n "$HEALTHY" --channel storm --rate 20 -m 200 --payload-bytes 8000 --subscribe-in-url \
    --max-seconds 90 --quiet >"$OUT/healthy-$1.json" 2>"$OUT/healthy-$1.log" || true
}

BASE_RSS=$(rss)
healthy calm

# The storm: STALLED connections subscribed to the channel, with a 4 KiB receive buffer,
# that read the 101 and the welcome and then nothing.
python3 - "$PORT" "$STALLED" >"$OUT/storm.log" 2>&1 <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
req = (f"GET /ws?channels=storm HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
       "Sec-WebSocket-Version: 13\r\n\r\n").encode()
socks = []
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(req)
    s.settimeout(10)
    got = b""
    while b'"subscribed":["storm"]' not in got:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"connection {i} closed before it was subscribed: {got[:200]!r}")
        got += chunk
    socks.append(s)
print(f"stalled: {len(socks)} subscribed, reading nothing", flush=True)
time.sleep(3600)
PY
STORM=$!
for _ in $(seq 600); do
  grep -q "stalled:" "$OUT/storm.log" 2>/dev/null && break
  kill -0 "$STORM" 2>/dev/null || { echo "slow consumers: FAIL: the stalled readers could not connect"; cat "$OUT/storm.log"; exit 1; }
  sleep 0.1
done
SLOW_BEFORE=$(stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["slow_consumers"])')
PEAK=0
( while kill -0 "$PID" 2>/dev/null; do rss; sleep 0.2; done >"$OUT/rss.txt" ) &
SAMPLER=$!
healthy storm
STORM_END=$(date +%s.%N)
# Within 5 s of the storm: every stalled reader closed as a slow consumer, and no socket of the
# server's to them left in the kernel.
LEFT=-1; SLOW=0
for _ in $(seq 25); do
  SLOW=$(( $(stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["slow_consumers"])') - SLOW_BEFORE ))
  LEFT=$(ss -Htn state all "( sport = :$PORT )" | awk '$1 != "LISTEN" && $3 > 0' | wc -l)
  [ "$SLOW" -ge "$STALLED" ] && [ "$LEFT" -eq 0 ] && break
  sleep 0.2
done
WAITED=$(python3 -c "import time; print(round(time.time() - $STORM_END, 1))")
kill "$SAMPLER" 2>/dev/null || true
PEAK=$(sort -n "$OUT/rss.txt" | tail -1)

python3 - "$OUT" "$BASE_RSS" "$PEAK" "$STALLED" "$OUTBOX" "$SLOW" "$LEFT" "$WAITED" <<'PY'
import json, sys
out, base, peak, stalled, outbox, slow, left, waited = sys.argv[1], *map(float, sys.argv[2:])
calm, storm = (json.load(open(f"{out}/healthy-{k}.json")) for k in ("calm", "storm"))
bound_kb = base + stalled * outbox / 1024
problems = []
for name, r in (("calm", calm), ("storm", storm)):
    if r.get("lost") != 0 or not r.get("received"):
        problems.append(f"healthy subscribers ({name}) lost {r.get('lost')} of {r.get('expected')}")
if slow < stalled:
    problems.append(f"only {slow:.0f} of {stalled:.0f} stalled readers were closed as slow consumers")
if left != 0:
    problems.append(f"{left:.0f} server sockets still held a send queue {waited} s after the storm")
if peak > bound_kb:
    problems.append(f"peak RSS {peak:.0f} kB above the bound {bound_kb:.0f} kB")
lat = lambda r, k: (r.get("latency_us") or {}).get(k)
print(f"healthy {calm.get('n')} subscribers, 20 msg/s of 8 KB: p50/p99 ms calm "
      f"{lat(calm,'p50')/1000:.1f}/{lat(calm,'p99')/1000:.1f}, with {stalled:.0f} stalled readers "
      f"{lat(storm,'p50')/1000:.1f}/{lat(storm,'p99')/1000:.1f}; lost {calm.get('lost')} / {storm.get('lost')}")
print(f"server RSS kB: baseline {base:.0f}, peak {peak:.0f} (bound {bound_kb:.0f}); slow consumers closed "
      f"{slow:.0f}/{stalled:.0f}; server sockets with a send queue left: {left:.0f} ({waited} s after)")
print(("slow consumers: FAIL: " + "; ".join(problems)) if problems else "slow consumers: PASS")
sys.exit(1 if problems else 0)
PY
