#!/usr/bin/env bash
# Faults on a two-node cluster sharing one broker, Redis or NATS (redis-server or nats-server
# must be installed):
#  1. The broker killed (SIGKILL) and restarted while subscribers on both nodes drop and
#     recover and a publisher runs (each publication numbered in its payload). Afterwards every
#     subscriber must have caught up, with nothing delivered twice or out of order;
#     publications answered 503 broker_unavailable while the broker was down are reported,
#     not losses (one may still have been made, if the broker died between doing it and
#     answering: its delivery is reported, not a fault).
#     - Redis (restarted from its append-only file) keeps the channel's history: nothing lost.
#     - Core NATS keeps nothing: what a node did not hear while away is lost, but never
#       silently: the subscriber is told (`broker_reconnected`, then `recovered: false`, or an
#       offset that skips). A sequence gap without such a warning fails the run.
#  2. A node killed (SIGKILL) with subscribers on a presence channel: the other node must stop
#     listing them within the presence TTL (no ghost presence), and its own stay listed.
#
# usage: scripts/soak/cluster-faults.sh   env: BROKER (redis|nats), HERALD_BIN, DURATION (30 s), OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin"
BROKER=${BROKER:-redis}
case "$BROKER" in
  redis|nats) command -v "$BROKER-server" >/dev/null || { echo "cluster faults: $BROKER-server is not installed" >&2; exit 2; } ;;
  *) echo "cluster faults: BROKER must be redis or nats, not '$BROKER'" >&2; exit 2 ;;
esac
DURATION=${DURATION:-30}
BIN=${HERALD_BIN:-}
if [ -z "$BIN" ]; then
  for b in target/release/herald target/debug/herald; do [ -x "$b" ] && { BIN=$b; break; }; done
fi
[ -x "${BIN:-}" ] || { echo "no herald binary: cargo build --release -p herald, or set HERALD_BIN" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d /tmp/herald-faults-XXXXXX)}
mkdir -p "$OUT/redis"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); APORT=$(free_port); BPORT=$(free_port)
KEY=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
TTL=3
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

start_broker() { # sets BROKER_PID
  if [ "$BROKER" = redis ]; then
    redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$OUT/redis" --appendonly yes \
      --appendfsync always --save "" >>"$OUT/broker.log" 2>&1 &
  else
    # JetStream (for the shared channels and bans) with its store on disk, kept over the kill.
    nats-server -a 127.0.0.1 -p "$RPORT" -js -sd "$OUT/nats" >>"$OUT/broker.log" 2>&1 &
  fi
  BROKER_PID=$!; PIDS+=("$BROKER_PID"); wait_port "$RPORT"
}
start_node() { # name port; sets NODE_PID (not in a subshell: the cleanup must know it)
  HERALD_ADMIN_KEY="$KEY" HERALD_NODE_NAME="$1" HERALD_BROKER__TYPE="$BROKER" \
    HERALD_BROKER__URL="$BROKER://127.0.0.1:$RPORT" HERALD_BROKER__TIMEOUT_MS=1000 \
    HERALD_BROKER__PRESENCE_TTL_SECS=$TTL \
    "$BIN" serve --listen "127.0.0.1:$2" --data-dir "$OUT/data-$1" >>"$OUT/node-$1.log" 2>&1 &
  NODE_PID=$!; PIDS+=("$NODE_PID")
  disown "$NODE_PID" # killed on purpose later: no "Killed" notice from bash
  wait_port "$2" || { cat "$OUT/node-$1.log" >&2; exit 2; }
}
start_broker
start_node a "$APORT"; A=$NODE_PID
start_node b "$BPORT"; B=$NODE_PID
api() { curl -s -H "Authorization: Bearer $KEY" "$@"; }

# 1. The broker killed and restarted under traffic: subscribers on each node, fed by a publisher
#    on the other (bench recover; each on its own channel, whose history covers what a
#    subscriber misses while away).
#    Node a's subscribers drop every 2 s, so each drops during the outage (and is refused
#    until the node is back); node b's every 8 s, so most are still subscribed when the node's
#    pub/sub connection returns and are told `broker_reconnected`.
bench() { # subscribers' port, publisher's port, label, drop period
  "$BIN" bench recover --url "ws://127.0.0.1:$1/ws" --api "http://127.0.0.1:$2" \
    --admin-key "$KEY" -n 50 --rate 20 --duration "$DURATION" --drop-every "$4" \
    --channel "faults-$3" --max-seconds $((DURATION + 90)) \
    --quiet >"$OUT/recover-$3.json" 2>"$OUT/recover-$3.log" || true
}
bench "$APORT" "$BPORT" a 2 & BA=$!
bench "$BPORT" "$APORT" b 8 & BB=$!
sleep $(( DURATION / 3 ))
kill -9 "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true
sleep 3
start_broker
wait "$BA" "$BB" || true

# 2. A node killed with subscribers on a presence channel.
python3 - "$APORT" "$BPORT" "$KEY" "$OUT" "$B" "$TTL" <<'PY' >"$OUT/presence.txt" 2>&1 || true
import json, os, signal, socket, sys, time, urllib.request
aport, bport, key, out, bpid, ttl = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
def api(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
print("create", api(aport, "POST", "/api/v1/channels", {"name": "room", "presence": True}))
def connect(port, n):
    socks = []
    req = (f"GET /ws?channels=room HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port)); s.sendall(req); s.settimeout(5)
        got = b""
        while b'"subscribed":["room"]' not in got:
            chunk = s.recv(4096)
            if not chunk: raise SystemExit(f"closed: {got!r}")
            got += chunk
        socks.append(s)
    return socks
on_a, on_b = connect(aport, 5), connect(bport, 7)
def listed():
    status, body = api(aport, "GET", "/api/v1/channels/room/presence")
    return len(body.get("clients", [])) if status == 200 else f"HTTP {status} {body}"
t0 = time.time()
while listed() != 12 and time.time() - t0 < 10: time.sleep(0.1)
print("listed before the kill:", listed())
os.kill(bpid, signal.SIGKILL)
killed = time.time()
while listed() != 5 and time.time() - killed < ttl * 4: time.sleep(0.1)
gone = time.time() - killed
n = listed()
print(f"listed after node b was killed: {n} (node a's 5) after {gone:.1f} s; presence_ttl_secs {ttl}")
print("PRESENCE " + ("OK" if n == 5 else "GHOST"))
PY

python3 - "$OUT" "$BROKER" <<'PY'
import json, sys
out, broker = sys.argv[1], sys.argv[2]
problems = []
for node in ("a", "b"):
    try:
        r = json.load(open(f"{out}/recover-{node}.json"))
    except Exception as e:
        problems.append(f"node {node}: no result ({e})"); continue
    print(f"node {node}: published {r.get('published_ok')} (refused {r.get('publish_errors')} while {broker} was down), "
          f"received {r.get('received')}, lost {r.get('lost')} by offset, by sequence: "
          f"lost {r.get('seq_lost_warned')} with a warning and {r.get('seq_lost_silent')} silently, "
          f"duplicates {r.get('seq_duplicates')}, delivered though answered 503 {r.get('seq_unconfirmed_delivered')}, "
          f"recovered {r.get('recovered')}, recover_failed {r.get('recover_failed')}, "
          f"subscribes refused {r.get('subscribe_refused_by_code')}, resubscribed {r.get('resubscribed')}, "
          f"caught_up {r.get('caught_up')}/{r.get('subscribed')}")
    if r.get("seq_duplicates") != 0: problems.append(f"node {node}: duplicates {r.get('seq_duplicates')}")
    if r.get("seq_lost_silent") != 0: problems.append(f"node {node}: lost {r.get('seq_lost_silent')} without a warning")
    if r.get("caught_up") != r.get("subscribed"): problems.append(f"node {node}: caught up {r.get('caught_up')} of {r.get('subscribed')}")
    if not r.get("publish_errors"): problems.append(f"node {node}: no publication was refused: was {broker} down at all?")
    if broker == "redis":
        # Redis keeps the history: nothing may be lost, by offset or by sequence.
        if r.get("duplicates") != 0: problems.append(f"node {node}: duplicate offsets {r.get('duplicates')}")
        if r.get("lost") != 0: problems.append(f"node {node}: lost {r.get('lost')}")
        if r.get("seq_lost_warned") != 0: problems.append(f"node {node}: lost {r.get('seq_lost_warned')} by sequence")
    if node == "b" and not r.get("resubscribed"): problems.append("node b: no subscriber was told broker_reconnected")
presence = open(f"{out}/presence.txt").read()
print(presence.strip())
if "PRESENCE OK" not in presence: problems.append("ghost presence after a node was killed")
print((f"cluster faults ({broker}): FAIL: " + "; ".join(problems)) if problems else f"cluster faults ({broker}): PASS")
sys.exit(1 if problems else 0)
PY
