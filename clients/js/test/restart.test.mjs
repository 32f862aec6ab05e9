// A server restart: the client backs off while nothing listens, comes back, and recovers from
// the durable history (same epoch) without gaps or duplicates.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { HeraldClient } from "../dist/index.js";
import { startHerald, waitFor } from "./herald.mjs";

const config = `
[channels]
history_size = 100
`;
let herald;
let client;

after(async () => {
  await client?.close();
  await herald?.stop();
});

test("reconnects with back-off across a server restart and recovers", async () => {
  herald = await startHerald(config);
  client = new HeraldClient({ url: herald.url, WebSocket, minDelayMs: 100, maxDelayMs: 400 });
  const messages = [];
  const recoveries = [];
  const disconnects = [];
  const failures = [];
  const connects = [];
  client.on("message", (m) => messages.push(m));
  client.on("recovery", (r) => recoveries.push(r));
  client.on("disconnected", (d) => disconnects.push(d));
  client.on("connected", (w) => connects.push(w));
  client.on("error", (e) => failures.push({ code: e.code, at: Date.now() }));

  await client.connect();
  await client.subscribe("restart");
  for (const n of [1, 2]) await herald.api("POST", "/api/v1/publish", { channel: "restart", data: n });
  await waitFor(() => messages.length === 2, "the first messages");

  const { port, dir } = herald;
  await herald.stop({ keepData: true });
  await waitFor(() => disconnects.length === 1, "the disconnect");
  assert.equal(disconnects[0].code, 1001); // server shutting down
  assert.equal(disconnects[0].reconnecting, true);
  // Nothing listens: attempts fail, further and further apart.
  await waitFor(() => failures.length >= 3, "failed attempts");
  assert.ok(failures.every((f) => f.code === "connect_failed"));
  assert.equal(client.connected, false);

  herald = await startHerald(config, { port, dir });
  await herald.api("POST", "/api/v1/publish", { channel: "restart", data: 3 });
  await waitFor(() => connects.length === 1, "the reconnect");
  await waitFor(() => messages.length >= 3, "the message published during the restart");
  await client.ping();
  assert.deepEqual(messages.map((m) => m.data), [1, 2, 3]);
  assert.deepEqual(messages.map((m) => m.offset), [1, 2, 3]);
  assert.equal(recoveries.length, 1);
  assert.equal(recoveries[0].recovered, true);
  assert.equal(recoveries[0].epoch, messages[0].epoch);
  // Back-off: the gaps between failed attempts are at least half the first delay, and the
  // number of attempts stays small.
  for (let i = 1; i < failures.length; i++) assert.ok(failures[i].at - failures[i - 1].at >= 40);
  assert.ok(failures.length < 100);
});
