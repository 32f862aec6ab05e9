#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from the real wire formats:
the five original protocols (the seed systems' byte-level spec, WIRE.md), Herald's own
(docs/protocol.md) and the unit tests' cases. Run from anywhere: `python3 fuzz/seeds.py`.
Crashing inputs that fuzzing found are kept apart (fuzz/corpus/<target>/crash-*) and are
not rewritten here.

Each target reads its first byte(s) as choices (see fuzz_targets/<target>.rs); the helpers
below prefix them.
"""

import base64
import hashlib
import hmac
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])
UUID = "1bfacd57-3bd7-4ac4-bb61-1f67ca21c641"


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- ws_decoder -------------------------------------------------------------------------

def frame(payload, opcode=1, fin=True, masked=True, length=None, rsv=0):
    """A client frame (masked unless told), optionally declaring another length."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    m = 0x80 if masked else 0
    if n < 126:
        head += bytes([m | n])
    elif n <= 0xFFFF:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def ws(limit, cuts, wire, long=False):
    """Choices byte: limit index (0-7), number of cuts (0-7), long round trip; then cuts."""
    config = limit | (len(cuts) << 3) | (0x40 if long else 0)
    return bytes([config]) + b"".join(struct.pack("<H", c) for c in cuts) + wire


def close(code, reason=b""):
    return frame(struct.pack(">H", code) + reason, opcode=8)


# Limits: 0, 1, 125, 126, 128, 1000, 64 KiB, 64 MiB.
seeds = {
    "text": ws(5, [3, 9], frame("hello, wörld")),
    "text-limit-0-empty": ws(0, [], frame("")),
    "binary-16bit": ws(6, [1, 4, 100], frame(bytes(range(200)), opcode=2)),
    "fragments-ping": ws(5, [2, 7, 12], frame("ab", fin=False) + frame("p", opcode=9)
                         + frame("cd", opcode=0)),
    "fragments-three": ws(5, [5], frame("one ", fin=False) + frame("two ", opcode=0, fin=False)
                          + frame("three", opcode=0)),
    "too-large-then-ok": ws(4, [60, 200], frame("a" * 300) + frame("ok")),
    "too-large-fragmented": ws(4, [70], frame("a" * 60, fin=False)
                               + frame("a" * 60, opcode=0, fin=False)
                               + frame("a" * 10, opcode=0) + frame("next")),
    "too-large-ping-inside": ws(2, [130], frame("x" * 100, fin=False) + frame("y", opcode=9)
                                + frame("z" * 100, opcode=0) + frame("after")),
    "declared-huge": ws(7, [2, 10], frame(b"abcdef", length=1 << 40)),
    "declared-64mib": ws(7, [], frame(b"abc", length=64 * 1024 * 1024)),
    "length-top-bit": ws(6, [], frame(b"", length=1 << 63)),
    "close-1000-bye": ws(5, [], close(1000, b"bye")),
    "close-empty": ws(5, [1], frame(b"", opcode=8)),
    "close-1005": ws(5, [], close(1005)),
    "close-one-byte": ws(5, [], frame(b"\x03", opcode=8)),
    "close-4999-bad-utf8": ws(5, [], close(4999, b"\xff\xfe")),
    "ping-125": ws(5, [40], frame(b"p" * 125, opcode=9)),
    "ping-126": ws(5, [], frame(b"p" * 126, opcode=9)),
    "pong": ws(5, [], frame(b"", opcode=10) + frame("after")),
    "unmasked": ws(5, [], frame("hi", masked=False)),
    "rsv1": ws(5, [], frame("x", rsv=0x40)),
    "opcode-3": ws(5, [], frame("x", opcode=3)),
    "bad-utf8": ws(5, [1], frame(b"\xff\xfe")),
    "utf8-split-across-fragments": ws(5, [8], frame("h\xe9".encode()[:2], fin=False)
                                      + frame("é".encode()[1:] + b"!", opcode=0)),
    "stray-continuation": ws(5, [], frame("x", opcode=0)),
    "message-inside-fragmented": ws(5, [], frame("a", fin=False) + frame("b")),
    "fragmented-ping": ws(5, [], frame(b"", opcode=9, fin=False)),
    "many-small": ws(3, [5, 17, 33, 60], b"".join(frame(str(i)) for i in range(20))),
    "round-trip-long": ws(7, [3], "round trip payload".encode(), long=True),
    "round-trip-close": ws(5, [], struct.pack(">H", 1001) + "going away é".encode()),
}
for name, data in seeds.items():
    write("ws_decoder", name, data)

# ---- native -----------------------------------------------------------------------------

native = [
    '{"op":"subscribe","channels":["news","chat:room-1"],"id":1}',
    '{"op":"subscribe","channel":"orders","token":"hct_8fRAUx","id":2}',
    '{"op":"subscribe","channels":["a","b"],"recover":{"a":{"epoch":"geJEerJP","offset":41}},"id":1}',
    '{"op":"subscribe","channels":["a"],"client":"' + UUID + '","id":"s"}',
    '{"op":"unsubscribe","channel":"news","id":3}',
    '{"op":"publish","channel":"orders","data":{"n":1},"id":5}',
    '{"op":"publish","channels":["orders"],"data":"only b","to":["3196013c-32e5-4a8b-8f17-ae308b957e48"],"id":6}',
    '{"op":"publish","channel":"a","data":[1,\n2],"id":7}',
    '{"op":"publish","channel":"a","data":{"k":1,"k":2}}',
    '{"op":"publish","channel":"a","data":1e400}',
    '{"op":"send","to":"' + UUID + '","data":{"hi":"there"},"id":8}',
    '{"op":"send","user":"alice","data":"hi","id":8}',
    '{"op":"history","channel":"a","since":{"epoch":"geJEerJP","offset":40},"limit":100,"reverse":false,"id":2}',
    '{"op":"presence","channel":"room","id":3}',
    '{"op":"presence_stats","channel":"room","id":4}',
    '{"op":"ping","id":9}',
    '{"op":"auth","token":"eyJhbGciOiJIUzI1NiJ9.e30.x","id":1}',
    '{"op":"channels","id":1}',
    '{"op":"kick","client":"' + UUID + '","id":1}',
    '{"\\u006fp":"p\\u0069ng","id":-1.5e3}',
    '{"op":"subscribe","channels":["\\u0061","b\\/c"]}',
    '{"op":"ping","id":1,"id":2}',
    '{"op":"publish","channel":"a","channel":"b","data":1,"id":"r"}',
    '{"op":"dance","id":1}',
    '{"op":7,"id":{"a":1}}',
    '{"op":"subscribe","channels":[],"id":1}',
    '{"op":"subscribe","channels":["a b"],"id":1}',
    '[1,2]',
    'not json',
    ' {"op":"ping"} ',
]
for i, text in enumerate(native):
    write("native", "%02d" % i, text)

# ---- dialects ---------------------------------------------------------------------------

def mode(m, text):
    return bytes([m]) + (text.encode() if isinstance(text, str) else text)


def string(s):
    b = s.encode()
    return bytes([len(b)]) + b


pushstream = [
    mode(0, "1"),
    mode(0, "/a/b.b5//c.bx/a.b2"),
    mode(0, "news.b18446744073709551616/chat:room.b0.b3"),
    mode(0, "a b"),
    mode(1, struct.pack("<Q", 1_767_225_600_042) + b"\x01" + struct.pack("<Q", 42)
         + b"Thu, 01 Jan 2026 00:00:00 GMT"),
    mode(1, struct.pack("<Q", 0) + b"\x00" + b"Sun, 06 Nov 1994 08:49:37 GMT"),
    mode(1, struct.pack("<Q", 253_402_300_799_999) + b"\x00" + b"yesterday"),
    mode(2, string("say \"hi\"\n") + b'"it\'s </script>\\n\\u2028"'),
    mode(2, string("Channel deleted.") + b'{"a":[1,2]}'),
    mode(2, string("<>&\r\n\x01\u2029") + b""),
]
for i, data in enumerate(pushstream):
    write("pushstream", "%02d" % i, data)

subsocket = [
    "sub news", "unsub news", "admin-token 123456", "pub news hello there", "pub news ",
    "pub news", "broadcast hi all", "broadcast", "message " + UUID + " x y", "kick " + UUID,
    "ban " + UUID, "ban " + UUID + " 60", "ban " + UUID + " soon", "sub", "dance now",
    "pub test-channel-system Hey admin client!",
]
for i, text in enumerate(subsocket):
    write("subsocket", "%02d" % i, mode(0, text))
write("subsocket", "deliver-0", mode(1, b"\x01" + bytes(8) + string("hello world") + b'{"a":1}'))
write("subsocket", "deliver-1", mode(1, b"\x00" + string("") + b'"hi"'))

wspush = [
    mode(0, '{"messageType":"CLIENT_ACTION","uuid":"' + UUID + '","action":"SUBSCRIBE","data":{"channel":"c"}}'),
    mode(0, '{"messageType":"CLIENT_ACTION","action":"UNSUBSCRIBE","data":{"channel":"c"}}'),
    mode(0, '{"messageType":"CLIENT_ACK"}'),
    mode(0, '{"messageType":"CLIENT_ACTION","uuid":"x","action":"SUBSCRIBE","data":{"channel":"c"}}'),
    mode(0, '{"messageType":"CLIENT_ACTION","action":"DANCE","data":{"channel":"c"}}'),
    mode(0, '{"messageType":"CLIENT_ACTION","action":"SUBSCRIBE","action":"UNSUBSCRIBE"}'),
    mode(0, "{nope"),
    mode(1, string("a<b>&c='d'\"") + string("A WebSocketChannel called \"x\" already exists")
         + b"\x02" + string("news") + string("chat:room") + bytes(8) + b'{"hi":1}'),
    mode(1, string("Push Message") + string("") + b"\x00" + bytes(8) + b'"plain text"'),
]
for i, data in enumerate(wspush):
    write("wspush", "%02d" % i, data)

EVENT = '{"specversion":"1.0","id":"1","source":"/sensors/1","type":"temp","data":{"c":21.5}}'
eventual = [
    mode(0, '{"type":"subscribe","channels":["a","b"]}'),
    mode(0, '{"type":"subscribe","channels":"tempUpdates"}'),
    mode(0, '{"type":"unsubscribe","channels":["a"]}'),
    mode(0, '{"type":"publish","channels":["a"],"event":' + EVENT + '}'),
    mode(0, '{"type":"publish","channels":"global","event":{"specversion":"1.0","id":"x","source":"s",'
         '"type":"t","subject":"*","time":"2022-06-24T00:00:00Z","meta":{},"ext1":true,"data_base64":"AA=="}}'),
    mode(0, '{"type":"publish","channels":["a"],"event":{"specversion":"0.3","id":"1","source":"s","type":"t"}}'),
    mode(0, '{"type":"publish","channels":["a"],"event":{"specversion":"1.0","id":"1","source":"s","type":"t","Bad-Name":"x"}}'),
    mode(0, '{"type":"dance","channels":["a"]}'),
    mode(0, '{"channels":["a"]}'),
    mode(0, "nope"),
    mode(0, "[1]"),
    mode(1, EVENT),
    mode(1, '{"n":1}'),
    mode(1, '"Invalid Request"'),
]
for i, data in enumerate(eventual):
    write("eventual", "%02d" % i, data)

simplysocket = [
    mode(0, '{"action":"join-room","message_body":{"roomname":"r1","playerlimit":2},"target":"mesh-global"}'),
    mode(0, '{"action":"leave-room","message_body":{"roomname":"r1"}}'),
    mode(0, '{"action":"room-presence","message_body":{"roomname":"r1"}}'),
    mode(0, '{"action":"send-message","message_body":{"message":"x"},"target":"r1","IsTargetClient":false}'),
    mode(0, '{"action":"poke","target":"u","istargetclient":true}'),
    mode(0, '{"action":"leave-room","message_body":{"room\\u006eame":"r\\/1"}}'),
    mode(0, '{"action":"join-room","message_body":{"roomname":"a","playerlimit":0}}'),
    mode(0, '{"action":"join-room","action":"leave-room"}'),
    mode(0, '{"action":"x"}'),
    mode(1, '{"action":"send-message","message_body":{"message":"hi"},"IsTargetClient":false,"target":"room1","sender":"abc"}'),
    mode(1, '{"message":"hi"}'),
]
for i, data in enumerate(simplysocket):
    write("simplysocket", "%02d" % i, data)

records = [
    mode(0, b"m42,Ep0ch,1700000000123,chat:a {\"x\":1}\nkping\ndhello world\n"),
    mode(0, b"mgarbage\nxyz\n\n\nm1,e,2,c\nm1,e,x,c p\n"),
    mode(1, b"\x00" + b'{"op":"message","data":[1,2]}'),
    mode(1, b"\x01" + b"{\"op\":\"ping\"}"),
    mode(1, b"\x02" + b"data with spaces, commas"),
    mode(2, "3,AbC-_9,chat:room-1 7,xyz,news"),
    mode(2, "1,e,c  2,f,d"),
    mode(2, "x,e,c"),
    mode(2, "1,e"),
    mode(2, "1,,c"),
    mode(2, "1,e,bad channel"),
]
for i, data in enumerate(records):
    write("records", "%02d" % i, data)

# ---- server -----------------------------------------------------------------------------

http = [
    "GET /sse?channels=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1,e,a\r\n\r\n",
    "GET /stream?channels=a,b&recover=3,e,a HTTP/1.0\r\nHost: x\r\n\r\n",
    "GET /ws?channels=news,chat%3Aroom HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\nOrigin: http://localhost:8080\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n"
    "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x82abcd\x00\x00",
    "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nContent-Length: 1\r\n\r\nx",
    "GET /sse?channels=a HTTP/1.1\r\nHost: x\r\n",
    "POST /sse HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /sse HTTP/1.1\r\nHost: x\r\n\r\nGET /sse HTTP/1.1\r\n\r\n",
    "GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n",
    "GET /pushstream/ev/news.b5/chat HTTP/1.1\r\nHost: x\r\nIf-None-Match: 3\r\n\r\n",
    "GET /pushstream/sub/news?_=1700000000&tag=&time=&eventid= HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /ws?a=%zz#frag HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
]
for i, text in enumerate(http):
    for plain in (1, 0) if i in (2, 3) else (1,):
        write("http_opening", "%02d-%s" % (i, "tcp" if plain else "tls"), mode(plain, text))

channel_list = [
    mode(3, "a,b,a"), mode(3, "a,,b"), mode(3, ""), mode(9, "bad name"),
    mode(0, "a,b"), mode(1, "x,x,x,y,z"), mode(63, "news,chat:room-1,a.b,c@d,e/f,g=h,i+j,_-"),
    mode(0x40 | 5, "channels=a%2Cb&channels=c&recover=1,e,a"),
    mode(0x40 | 5, "channels=news+chat&x=1"),
    mode(0x40 | 1, "channels=%E2%82%AC,a"),
]
for i, data in enumerate(channel_list):
    write("channel_list", "%02d" % i, data)

example = os.path.join(os.path.dirname(ROOT), "..", "crates", "herald-server", "herald.example.toml")
with open(example, "rb") as f:
    write("config", "example", mode(0, f.read()))
config = [
    "[websocket]\nping_interval_secs = 0\n",
    "[websocket]\noutbox_max_bytes = 1000\n",
    "[tls]\nlisten = \"127.0.0.1:8443\"\n",
    "[events]\nheaders = [\"Authorization\"]\n",
    "[limits]\nmax_payload_bytes = 9223372036854775807\nmax_http_body_bytes = 9223372036854775807\n",
    "[broker]\ntype = \"redis\"\nsentinel_master = \"mymaster\"\nsentinel_nodes = [\"redis://127.0.0.1:26379/\"]\n",
    "[broker]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n",
    "[namespaces.chat]\nsubscribe = \"private\"\nhistory_size = 100\nhistory_ttl_secs = 600\n",
    "[[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"0123456789abcdef\"\ntypes = [\"connect\"]\n",
    "[[ingress]]\ntype = \"redis_stream\"\nurl = \"redis://127.0.0.1/\"\nformat = \"gogin\"\n",
    "[jwt]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\nleeway_secs = 300\n",
    "[dialects.pushstream]\nenabled = true\n[dialects.wspush]\nenabled = true\nlisten = \"0.0.0.0:5222\"\n",
]
for i, text in enumerate(config):
    write("config", "%02d" % i, mode(0, text))
# Structured mode: (key choice u16, value choice) pairs.
write("config", "structured-0", bytes([1]) + bytes([8, 0, 2, 3, 16, 1, 1, 24, 0, 0, 2, 0, 0]))
write("config", "structured-1", bytes([1]) + bytes([1, 0, 3, 0, 200, 1, 1, 2, 2, 0, 1, 0, 3, 0, 0]))

SECRET = b"fuzzing-secret-0123456789abcdefghijklmnop"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def token(header, claims, alg="HS256"):
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signed = b64(header.encode()) + b"." + b64(claims.encode())
    return signed + b"." + b64(hmac.new(SECRET, signed, digest).digest())


good = '{"sub":"alice","exp":4102444800,"channels":["news"],"admin":false}'
strict = '{"sub":"bob","exp":4102444800,"iss":"herald","aud":["x","app"],"nbf":1}'
jwt_seeds = [
    mode(0, token('{"alg":"HS256","typ":"JWT"}', good)),
    mode(0, token('{"alg":"HS512"}', strict, "HS512")),
    mode(0, b64(b'{"alg":"none"}') + b"." + b64(good.encode()) + b"."),
    mode(0, "eyJhbGciOiJSUzI1NiJ9.e30.x"),
    mode(0, "not.a.token"),
]
for alg_i, (header, claims) in enumerate([
    ('{"alg":"HS256","typ":"JWT"}', good),
    ('{"alg":"HS384"}', strict),
    ('{"alg":"HS512","kid":"k"}', '{"sub":"","exp":4102444800}'),
    ('{"alg":"HS256"}', '{"sub":"a","exp":1}'),
    ('{"alg":"HS256"}', '{"sub":"a","exp":4102444800,"aud":"app","iss":"herald","channel":"private:1"}'),
    ('{"alg":"HS256"}', '{"sub":"a","exp":4102444800.5}'),
    ('{"alg":"RS256"}', good),
]):
    h = header.encode()
    write("jwt", "signed-%d" % alg_i, bytes([1, alg_i % 3]) + struct.pack("<H", len(h)) + h
          + claims.encode())
for i, data in enumerate(jwt_seeds):
    write("jwt", "%02d" % i, data)
write("jwt", "mint-0", bytes([2, 0]) + string("alice") + b"\x01" + string("news") + b"\x01")
write("jwt", "mint-1", bytes([2, 1]) + string("bob") + b"\x00\x00" + bytes(8) + b"\x01" + bytes(8))
