#!/usr/bin/env bash
# Runs Autobahn|Testsuite's fuzzing client (cases 1.* to 10.*; 12 and 13, permessage-deflate,
# are left out: Herald does not negotiate compression) against Herald's debug echo
# (`[debug] ws_echo`, /debug/echo) over plain TCP and over TLS, then prints a summary of
# index.json: the cases by result, overall and per section, for each. Exits non-zero when a
# case FAILED (or WRONG CODE, UNCLEAN), when a case is missing, or when the suite did not run.
#
#   scripts/autobahn/setup.sh            # once: installs wstest (outside the clone)
#   scripts/autobahn/run.sh [HERALD_BIN]
#
# HERALD_BIN (or the argument): the herald binary; default: `cargo build -p herald` and its
# debug binary. AUTOBAHN_HOME: where setup.sh installed wstest. AUTOBAHN_OUT: where the
# reports go (default: a temporary directory, removed at the end). AUTOBAHN_TIMEOUT: seconds
# the suite may take (default 900).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
home="${AUTOBAHN_HOME:-${HOME:-/root}/.cache/herald-autobahn}"
wstest="$home/bin/wstest"
timeout_secs="${AUTOBAHN_TIMEOUT:-900}"

die() { echo "autobahn: $*" >&2; exit 1; }

[ -x "$wstest" ] || die "no wstest in $home/bin: run scripts/autobahn/setup.sh first"
command -v openssl >/dev/null || die "openssl is needed for the test certificate"
bin="${1:-${HERALD_BIN:-}}"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build -q -p herald)
  bin="${CARGO_TARGET_DIR:-$root/target}/debug/herald"
fi
[ -x "$bin" ] || die "no herald binary at $bin"

work="$(mktemp -d)"
out="${AUTOBAHN_OUT:-$work/reports}"
mkdir -p "$out"
herald_pid=""
cleanup() {
  if [ -n "$herald_pid" ] && kill -0 "$herald_pid" 2>/dev/null; then
    kill "$herald_pid" 2>/dev/null || true
    wait "$herald_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A self-signed certificate for 127.0.0.1 (wstest does not verify it).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1 \
  || die "openssl could not make a test certificate"

# Free ports chosen by the kernel: both listeners on port 0, read back from herald's banner.
cat >"$work/herald.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$work/data"
admin_key = "autobahn-run-$(date +%s)-$$"
log = "warn"

[tls]
listen = "127.0.0.1:0"
cert_file = "$work/cert.pem"
key_file = "$work/key.pem"

[debug]
ws_echo = true
TOML
"$bin" serve --config "$work/herald.toml" 2>"$work/herald.log" &
herald_pid=$!
plain="" tls=""
for _ in $(seq 1 300); do
  plain="$(sed -n 's/^herald .* listening on \([0-9.:]*\)$/\1/p' "$work/herald.log")"
  tls="$(sed -n 's|^ *WSS: *wss://\([0-9.:]*\)/ws$|\1|p' "$work/herald.log")"
  [ -n "$plain" ] && [ -n "$tls" ] && break
  kill -0 "$herald_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$plain" ] || [ -z "$tls" ]; then
  cat "$work/herald.log" >&2
  die "herald did not start"
fi
echo "autobahn: herald $("$bin" --version | awk '{print $2}') on ws://$plain and wss://$tls"

cat >"$work/fuzzingclient.json" <<JSON
{
  "outdir": "$out",
  "servers": [
    {"agent": "herald-plain", "url": "ws://$plain/debug/echo"},
    {"agent": "herald-tls", "url": "wss://$tls/debug/echo"}
  ],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON

started=$(date +%s)
status=0
(cd "$work" && timeout --kill-after=10 "$timeout_secs" "$wstest" -m fuzzingclient \
  -s "$work/fuzzingclient.json") >"$work/wstest.log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - started ))
if [ "$status" -ne 0 ]; then
  tail -n 40 "$work/wstest.log" >&2
  [ "$status" -eq 124 ] && die "the suite did not finish within ${timeout_secs}s"
  die "wstest exited with status $status"
fi
if ! kill -0 "$herald_pid" 2>/dev/null; then
  cat "$work/herald.log" >&2
  die "herald died during the run"
fi
if [ -n "${AUTOBAHN_OUT:-}" ]; then
  echo "autobahn: the suite took ${elapsed}s; reports in $out (index.html)"
else
  echo "autobahn: the suite took ${elapsed}s (set AUTOBAHN_OUT=DIR to keep the reports)"
fi

# The summary, from index.json (Python 3 if there is one, else the suite's Python 2.7).
python="$(command -v python3 || echo "$home/bin/python2.7")"
"$python" - "$out/index.json" <<'PY'
import json, sys

RESULTS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
BAD = ("FAILED", "WRONG CODE", "UNCLEAN")
try:
    index = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit("autobahn: no readable report (%s)" % e)

def key(case):
    return [int(p) for p in case.split(".")]

failed = []
agents = ["herald-plain", "herald-tls"]
for agent in agents:
    if agent not in index:
        sys.exit("autobahn: no results for %s" % agent)
counts = set(len(index[a]) for a in agents)
if len(counts) != 1 or min(counts) < 250:
    sys.exit("autobahn: missing cases: %s" % dict((a, len(index[a])) for a in agents))
for agent in agents:
    cases = index[agent]
    sections = sorted(set(c.split(".")[0] for c in cases), key=int)
    extra = sorted(set(r["behavior"] for r in cases.values()) - set(RESULTS))
    columns = RESULTS + extra
    print("")
    print("%s: %d cases" % (agent, len(cases)))
    print("%-8s" % "section" + "".join("%15s" % c for c in columns))
    def row(name, results):
        print("%-8s" % name + "".join("%15d" % sum(1 for r in results if r["behavior"] == c)
                                       for c in columns))
    for s in sections:
        row(s, [r for c, r in cases.items() if c.split(".")[0] == s])
    row("all", list(cases.values()))
    for case in sorted(cases, key=key):
        r = cases[case]
        if r["behavior"] != "OK" or r.get("behaviorClose") not in ("OK", "INFORMATIONAL"):
            print("  %-8s %-14s close: %s" % (case, r["behavior"], r.get("behaviorClose")))
        if r["behavior"] in BAD or r.get("behaviorClose") in BAD:
            failed.append("%s %s" % (agent, case))
print("")
if failed:
    shown = ", ".join(failed[:20]) + (", ..." if len(failed) > 20 else "")
    print("autobahn: %d failed: %s" % (len(failed), shown))
    sys.exit(1)
print("autobahn: no case failed")
PY
