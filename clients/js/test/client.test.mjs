// The client against a real Herald (built from this workspace; see test/herald.mjs).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { HeraldClient, HeraldError } from "../dist/index.js";
import { startHerald, waitFor, mintToken, expiredToken, JWT_SECRET } from "./herald.mjs";

let herald;
const clients = [];

before(async () => {
  herald = await startHerald(`
[channels]
history_size = 100
client_publish = true
client_direct_messages = true

[namespaces.private]
subscribe = "private"

[namespaces.short]
history_size = 2

[jwt]
hmac_secret = "${JWT_SECRET}"
`);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await herald?.stop();
});

/** A client on the test server, closed at the end. */
function client(options = {}) {
  const c = new HeraldClient({ url: herald.url, WebSocket, minDelayMs: 50, maxDelayMs: 500, ...options });
  clients.push(c);
  return c;
}

/** Collects a client's events of one kind. */
function collect(c, event) {
  const seen = [];
  c.on(event, (e) => seen.push(e));
  return seen;
}

const kick = (c, query = "") => herald.api("DELETE", `/api/v1/clients/${c.clientId}${query}`);
const publishHttp = (channel, data) => herald.api("POST", "/api/v1/publish", { channel, data });

test("subscribe, publish, send, history, presence and ping over one connection", async () => {
  const a = client();
  const b = client();
  const welcome = await a.connect();
  assert.equal(welcome.server, "herald");
  assert.equal(a.clientId, welcome.client);
  await b.connect();
  const aMessages = collect(a, "message");
  const bDirect = collect(b, "direct");

  const sub = await a.subscribe(["basics", "basics-2"]);
  assert.deepEqual(sub.changed, ["basics", "basics-2"]);
  const pub = await b.publish("basics", { n: 1 });
  assert.equal(pub.channels[0].channel, "basics");
  assert.equal(pub.channels[0].delivered, 1);
  await waitFor(() => aMessages.length === 1, "the message");
  assert.deepEqual(aMessages[0].data, { n: 1 });
  assert.equal(aMessages[0].from, b.clientId);
  assert.deepEqual(a.position("basics"), { epoch: pub.channels[0].epoch, offset: pub.channels[0].offset });

  assert.deepEqual(await a.send(b.clientId, "hi"), { sent: true });
  await waitFor(() => bDirect.length === 1, "the direct message");
  assert.deepEqual(bDirect[0], { from: a.clientId, data: "hi" });

  const history = await b.history("basics");
  assert.deepEqual(history.publications.map((p) => p.data), [{ n: 1 }]);
  assert.deepEqual((await a.ping()).pong, true);

  await assert.rejects(a.presence("basics"), (e) => e instanceof HeraldError && e.code === "presence_disabled");
  const unsub = await a.unsubscribe("basics");
  assert.deepEqual(unsub.changed, ["basics"]);
  assert.equal(a.position("basics"), undefined);
});

test("server errors reject with a HeraldError carrying the server's code", async () => {
  const c = client();
  await c.connect();
  await assert.rejects(c.subscribe("not a channel!"), (e) => {
    assert.ok(e instanceof HeraldError);
    assert.equal(e.code, "invalid_channel");
    assert.ok(e.message.length > 0);
    return true;
  });
  await assert.rejects(c.subscribe("private:board"), (e) => e instanceof HeraldError && e.code === "forbidden");
  await assert.rejects(c.request({ op: "clients" }), (e) => e instanceof HeraldError && e.code === "forbidden");
  await assert.rejects(c.request({ op: "dance" }), (e) => e instanceof HeraldError && e.code === "unknown_op");
  await assert.rejects(c.send("not-a-uuid", 1), (e) => e instanceof HeraldError && e.code === "invalid_client_id");
  // A refused subscription is not resubscribed after a reconnect.
  const errors = collect(c, "error");
  const first = c.clientId;
  await kick(c);
  await waitFor(() => c.connected && c.clientId !== first, "the reconnect");
  assert.deepEqual(errors, []);
});

test("reconnects after the server drops the socket, and keeps its subscriptions", async () => {
  const c = client();
  await c.connect();
  await c.subscribe("kicked");
  const disconnects = collect(c, "disconnected");
  const connects = collect(c, "connected");
  const messages = collect(c, "message");
  const first = c.clientId;

  await kick(c, "?reason=test");
  await waitFor(() => connects.length === 1, "the reconnect");
  assert.equal(disconnects[0].code, 4200);
  assert.equal(disconnects[0].reason, "test");
  assert.equal(disconnects[0].reconnecting, true);
  assert.notEqual(c.clientId, first);

  const info = await herald.api("GET", `/api/v1/clients/${c.clientId}`);
  assert.deepEqual(info.channels.map((ch) => ch.name ?? ch.channel ?? ch), ["kicked"]);
  await publishHttp("kicked", "after");
  await waitFor(() => messages.length === 1, "a message after the reconnect");
  assert.equal(messages[0].data, "after");
});

test("recovers what was published while disconnected: all of it, once, in order", async () => {
  const c = client({ minDelayMs: 1000, maxDelayMs: 1000 });
  await c.connect();
  await c.subscribe("recover");
  const messages = collect(c, "message");
  const recoveries = collect(c, "recovery");
  const disconnects = collect(c, "disconnected");
  const connects = collect(c, "connected");

  for (let i = 1; i <= 3; i++) await publishHttp("recover", i);
  await waitFor(() => messages.length === 3, "the first messages");

  await kick(c);
  await waitFor(() => disconnects.length === 1, "the disconnect");
  // The client waits about a second before reconnecting: these are published while it is away.
  for (let i = 4; i <= 10; i++) await publishHttp("recover", i);
  assert.equal(c.connected, false);

  await waitFor(() => connects.length === 1, "the reconnect");
  for (let i = 11; i <= 13; i++) await publishHttp("recover", i);
  await waitFor(() => messages.length >= 13, "every message");

  assert.deepEqual(messages.map((m) => m.data), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
  assert.deepEqual(messages.map((m) => m.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
  assert.equal(new Set(messages.map((m) => m.epoch)).size, 1);
  assert.equal(recoveries.length, 1);
  assert.deepEqual(recoveries[0], { channel: "recover", recovered: true, epoch: messages[0].epoch, offset: 10 });
  // Nothing more arrives (no duplicates), checked with a round trip after the last message.
  await c.ping();
  assert.equal(messages.length, 13);
});

test("recovers even when it saw no message before the disconnect", async () => {
  const c = client({ minDelayMs: 1000, maxDelayMs: 1000 });
  await c.connect();
  await c.subscribe("recover-empty");
  const messages = collect(c, "message");
  const disconnects = collect(c, "disconnected");
  const recoveries = collect(c, "recovery");
  await kick(c);
  await waitFor(() => disconnects.length === 1, "the disconnect");
  for (let i = 1; i <= 3; i++) await publishHttp("recover-empty", i);
  await waitFor(() => messages.length === 3, "the missed messages");
  assert.deepEqual(messages.map((m) => m.data), [1, 2, 3]);
  assert.equal(recoveries[0].recovered, true);
});

test("tells when recovery was impossible (recovered: false)", async () => {
  const c = client({ minDelayMs: 1000, maxDelayMs: 1000 });
  await c.connect();
  await c.subscribe("short:feed"); // keeps only 2 publications
  const messages = collect(c, "message");
  const recoveries = collect(c, "recovery");
  const disconnects = collect(c, "disconnected");
  await publishHttp("short:feed", 1);
  await waitFor(() => messages.length === 1, "the first message");
  await kick(c);
  await waitFor(() => disconnects.length === 1, "the disconnect");
  for (let i = 2; i <= 6; i++) await publishHttp("short:feed", i);
  await waitFor(() => recoveries.length === 1, "the recovery outcome");
  assert.equal(recoveries[0].recovered, false);
  assert.equal(recoveries[0].offset, 6);
  assert.deepEqual(c.position("short:feed"), { epoch: recoveries[0].epoch, offset: 6 });
  assert.deepEqual(messages.map((m) => m.data), [1]); // nothing replayed
  await publishHttp("short:feed", 7);
  await waitFor(() => messages.length === 2, "the next live message");
  assert.equal(messages[1].offset, 7);
});

test("an expired token calls refreshToken, and the fresh token is used from then on", async () => {
  let refreshes = 0;
  const c = client({
    token: expiredToken("alice"),
    refreshToken: async () => (refreshes++, mintToken("alice", "--ttl", "3600")),
  });
  await c.connect();
  assert.equal(refreshes, 1);
  assert.equal(c.auth.user, "alice");
  const info = await herald.api("GET", `/api/v1/clients/${c.clientId}`);
  assert.equal(info.user, "alice");

  // A reconnect authenticates with the refreshed token, without asking again.
  const connects = collect(c, "connected");
  await kick(c);
  await waitFor(() => connects.length === 1, "the reconnect");
  assert.equal(refreshes, 1);
  assert.equal(c.auth.user, "alice");
});

test("an expired token in the URL (tokenIn: query) is refreshed before connecting", async () => {
  let refreshes = 0;
  const c = client({
    tokenIn: "query",
    token: expiredToken("bob"),
    refreshToken: () => (refreshes++, mintToken("bob")),
  });
  await c.connect();
  assert.equal(refreshes, 1);
  const info = await herald.api("GET", `/api/v1/clients/${c.clientId}`);
  assert.equal(info.user, "bob");
});

test("an expired token without refreshToken stops the client with token_expired", async () => {
  const c = client({ token: expiredToken("carol") });
  const errors = collect(c, "error");
  await assert.rejects(c.connect(), (e) => e instanceof HeraldError && e.code === "closed");
  assert.equal(errors[0].code, "token_expired");
});

test("the admin key makes an admin connection that can use admin ops", async () => {
  const admin = client({ token: herald.adminKey });
  await admin.connect();
  assert.equal(admin.auth.admin, true);
  const { clients: list } = await admin.request({ op: "clients" });
  assert.ok(list.some((x) => (x.id ?? x.client) === admin.clientId));
  // A private channel is open to admins.
  await admin.subscribe("private:board");
});

test("a kick with reconnect=false stops the client; close() rejects what waits", async () => {
  const c = client();
  await c.connect();
  const closed = collect(c, "closed");
  const disconnects = collect(c, "disconnected");
  await kick(c, "?reconnect=false");
  await waitFor(() => closed.length === 1, "the client to stop");
  assert.equal(closed[0].code, 4000);
  assert.equal(disconnects[0].reconnecting, false);
  await assert.rejects(c.ping(), (e) => e instanceof HeraldError && e.code === "closed");

  const d = client({ url: "ws://127.0.0.1:1/ws" }); // nothing listens there: it keeps retrying
  const waiting = d.publish("x", 1);
  d.connect().catch(() => {});
  await d.close();
  await assert.rejects(waiting, (e) => e instanceof HeraldError && e.code === "closed");

  const never = client(); // never connected: close() rejects what it queued, later requests too
  const queued = never.ping();
  await never.close();
  await assert.rejects(queued, (e) => e instanceof HeraldError && e.code === "closed");
  await assert.rejects(never.ping(), (e) => e instanceof HeraldError && e.code === "closed");
});

test("a private channel joined with a subscription token is resubscribed with a fresh one", async () => {
  const c = client({ token: mintToken("dave") });
  await c.connect();
  await assert.rejects(c.subscribe("private:room"), (e) => e instanceof HeraldError && e.code === "forbidden");
  let minted = 0; // a function gives a fresh subscription token at every resubscription
  await c.subscribe("private:room", { token: () => (minted++, mintToken("dave", "--channel", "private:room")) });
  assert.equal(minted, 1);
  await c.subscribe("open-room");
  const messages = collect(c, "message");
  const connects = collect(c, "connected");
  const errors = collect(c, "error");
  await kick(c);
  await waitFor(() => connects.length === 1, "the reconnect");
  assert.deepEqual(errors, []);
  assert.equal(minted, 2);
  const info = await herald.api("GET", `/api/v1/clients/${c.clientId}`);
  assert.deepEqual(info.channels.map((ch) => ch.name ?? ch.channel ?? ch).sort(), ["open-room", "private:room"]);
  await publishHttp("private:room", "secret");
  await waitFor(() => messages.length === 1, "the private message");
  assert.equal(messages[0].data, "secret");
});
