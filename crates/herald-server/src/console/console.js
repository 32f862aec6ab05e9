// Herald's admin console (docs/console.md). It keeps the admin key in sessionStorage, sends
// it as `Authorization: Bearer` to the HTTP API under /api/v1 and as `?token=` to one admin
// WebSocket for the lifecycle events. Every figure comes from the API; nothing is rendered
// as HTML (textContent only), since channel names, data and user ids come from clients.
"use strict";

const KEY_ITEM = "herald.console.key";
const STATS_EVERY_MS = 1000;
const LISTS_EVERY_MS = 2000;
const CHART_POINTS = 120;
const MAX_EVENTS = 200;
const MAX_ROWS = 500; // rows shown per list; a big server has more clients than a page can hold

const $ = (id) => document.getElementById(id);
// Test and debugging aid: what the page did, newest last (read by the browser tests).
window.log = [];
const note = (line) => {
  window.log.push(line);
  if (window.log.length > 500) window.log.shift();
};

let key = null;
let session = 0; // bumped when signing in or out: answers to an older session are dropped
let timers = [];
let socket = null;
let previous = null; // the last stats answer, with the time it came
const rates = []; // [publications/s, deliveries/s], oldest first
let openChannel = null;
let clientsSoon = null; // a pending client-list refresh asked for by events

/** Builds an element: `el("td", {className: "x"}, "text", child)`. */
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    node.append(child instanceof Node ? child : String(child ?? ""));
  }
  return node;
}

function button(text, label, onClick) {
  const b = el("button", { type: "button", textContent: text });
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

// A blocked load or connection would break the page silently: say so in the log.
document.addEventListener("securitypolicyviolation", (e) =>
  note("csp blocked " + e.violatedDirective + " " + e.blockedURI));

class Refused extends Error {}

/** One API call with the key; a 401 or 403 ends the session. */
async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + key } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const mine = session;
  const res = await fetch("/api/v1" + path, init);
  const answer = await res.json().catch(() => ({}));
  if (mine !== session) throw new Refused(); // signed out meanwhile: show nothing
  if (res.status === 401 || res.status === 403) {
    refuse(answer.error ? answer.error.code : String(res.status));
    throw new Refused();
  }
  if (!res.ok) {
    const e = answer.error || { code: String(res.status), message: res.statusText };
    throw new Error(e.code + ": " + e.message);
  }
  return answer;
}

// ---- session ----------------------------------------------------------------------------

function stop() {
  session += 1;
  timers.forEach(clearInterval);
  timers = [];
  if (socket) {
    socket.onclose = null;
    socket.close();
    socket = null;
  }
  clearTimeout(clientsSoon);
  clientsSoon = null;
  previous = null;
  rates.length = 0;
}

/** Forgets the key and every figure shown: the refusal shows no data. */
function refuse(code) {
  stop();
  key = null;
  sessionStorage.removeItem(KEY_ITEM);
  for (const id of ["nodes", "channels", "clients", "bans"]) {
    $(id).tBodies[0].replaceChildren();
    if ($(id + "-more")) $(id + "-more").textContent = "";
  }
  for (const figure of $("stats").querySelectorAll("dd")) figure.textContent = "–";
  for (const id of ["channel-detail", "client-detail"]) $(id).hidden = true;
  for (const id of ["channel-history", "channel-presence", "client-detail-body",
    "publish-result", "client-result", "ban-result"]) {
    $(id).textContent = "";
  }
  openChannel = null;
  $("events").replaceChildren();
  const canvas = $("rate-chart");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  $("console").hidden = true;
  $("logout-button").hidden = true;
  $("login-form").hidden = false;
  const refusal = $("refusal");
  refusal.textContent =
    "Refused (" + code + "): the server did not accept this admin key. Nothing is shown.";
  refusal.hidden = false;
  $("auth-status").textContent = "Not signed in.";
  note("refused " + code);
}

async function start(candidate) {
  stop();
  key = candidate;
  $("refusal").hidden = true;
  $("auth-status").textContent = "Checking the key…";
  try {
    await refreshStats();
  } catch (e) {
    if (!(e instanceof Refused)) {
      $("auth-status").textContent = "The server did not answer: " + e.message;
    }
    return;
  }
  sessionStorage.setItem(KEY_ITEM, key);
  $("admin-key").value = "";
  $("login-form").hidden = true;
  $("logout-button").hidden = false;
  $("console").hidden = false;
  $("auth-status").textContent = "Signed in with the admin key.";
  note("signed in");
  refreshLists();
  timers.push(setInterval(() => refreshStats().catch(report), STATS_EVERY_MS));
  timers.push(setInterval(refreshLists, LISTS_EVERY_MS));
  connectEvents();
}

function report(e) {
  if (e instanceof Refused) return;
  note("error " + e.message);
  $("auth-status").textContent = "Signed in; the last call failed: " + e.message;
}

// ---- figures and chart ------------------------------------------------------------------

async function refreshStats() {
  const s = await api("GET", "/stats");
  const now = performance.now();
  $("stat-connections").textContent = s.connections;
  $("stat-channels").textContent = s.channels;
  $("stat-subscriptions").textContent = s.subscriptions;
  $("stat-nodes").textContent = s.nodes;
  $("stat-uptime").textContent = duration(s.uptime_seconds);
  if (previous) {
    const dt = Math.max((now - previous.at) / 1000, 0.001);
    const pub = Math.max(0, s.publications - previous.stats.publications) / dt;
    const out = Math.max(0, s.messages_out - previous.stats.messages_out) / dt;
    rates.push([pub, out]);
    if (rates.length > CHART_POINTS) rates.shift();
    $("stat-publish-rate").textContent = pub.toFixed(1);
    $("stat-delivery-rate").textContent = out.toFixed(1);
    draw();
  }
  previous = { at: now, stats: s };
}

function duration(seconds) {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return (h ? h + " h " : "") + (h || m ? m + " min " : "") + (seconds % 60) + " s";
}

function draw() {
  const canvas = $("rate-chart");
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  const top = Math.max(1, ...rates.flat());
  g.fillStyle = "#555";
  g.font = "11px sans-serif";
  g.fillText(top.toFixed(1) + "/s", 4, 12);
  const step = width / (CHART_POINTS - 1);
  // Deliveries wide underneath, publications narrow on top: both stay visible when equal.
  const lines = [[1, "#b35900", 4], [0, "#1f6feb", 1.5]];
  lines.forEach(([series, color, lineWidth]) => {
    g.strokeStyle = color;
    g.lineWidth = lineWidth;
    g.beginPath();
    rates.forEach((r, i) => {
      const x = (CHART_POINTS - rates.length + i) * step;
      const y = height - 2 - (r[series] / top) * (height - 18);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  });
}

// ---- lists --------------------------------------------------------------------------------

async function refreshLists() {
  await Promise.all([
    refreshNodes(),
    refreshChannels(),
    refreshClients(),
    refreshBans(),
  ]).catch(report);
}

/** Shows the first MAX_ROWS of `items` in the table, each as `toRow` makes it. */
function fill(tableId, items, toRow) {
  $(tableId).tBodies[0].replaceChildren(...items.slice(0, MAX_ROWS).map(toRow));
  const more = $(tableId + "-more");
  if (more) {
    more.textContent =
      items.length > MAX_ROWS ? "Showing " + MAX_ROWS + " of " + items.length + "." : "";
  }
}

async function refreshNodes() {
  const { nodes } = await api("GET", "/nodes");
  fill("nodes", nodes, (n) =>
    el("tr", {}, el("td", {}, n.name), el("td", {}, n.connections),
      el("td", {}, n.subscriptions), el("td", {}, duration(n.uptime_seconds))));
}

async function refreshChannels() {
  const { channels } = await api("GET", "/channels");
  fill("channels", channels, (c) => {
    const row = el("tr", {},
      el("td", {}, c.name), el("td", {}, c.subscribers),
      el("td", {}, c.persistent ? "yes" : "no"), el("td", {}, c.offset),
      el("td", {}, button("Inspect", "Inspect channel " + c.name,
        () => inspectChannel(c.name).catch(report))));
    row.dataset.channel = c.name;
    return row;
  });
  if (openChannel) inspectChannel(openChannel).catch(report);
}

async function inspectChannel(name) {
  openChannel = name;
  const path = "/channels/" + encodeURIComponent(name);
  $("channel-detail-title").textContent = "Channel " + name;
  $("channel-detail").hidden = false;
  const [history, presence] = await Promise.all([
    api("GET", path + "/history?limit=20&reverse=true").catch((e) => e),
    api("GET", path + "/presence").catch((e) => e),
  ]);
  $("channel-history").textContent = shown(history, (h) =>
    h.publications.length
      ? h.publications.map((p) => "#" + p.offset + " " + JSON.stringify(p.data)).join("\n")
      : "(nothing kept: the channel keeps no history, or nothing was published)");
  $("channel-presence").textContent = shown(presence, (p) =>
    p.clients.map((c) => c.client + (c.user ? " (" + c.user + ")" : "")).join("\n") || "(nobody)");
}

function shown(answer, format) {
  if (answer instanceof Refused) throw answer;
  return answer instanceof Error ? answer.message : format(answer);
}

async function refreshClients() {
  const { clients } = await api("GET", "/clients");
  fill("clients", clients, (c) => {
    const row = el("tr", {},
      el("td", { className: "id" }, c.id), el("td", {}, c.dialect), el("td", {}, c.remote),
      el("td", {}, c.admin ? "yes" : "no"), el("td", {}, c.subscriptions),
      el("td", {}, c.messages_in + " / " + c.messages_out),
      el("td", {},
        button("Details", "Details of client " + c.id, () => clientDetails(c.id).catch(report)),
        button("Kick", "Kick client " + c.id, () => kick(c.id)),
        button("Ban", "Ban client " + c.id, () => banClient(c.id))));
    row.dataset.clientId = c.id;
    return row;
  });
}

async function clientDetails(id) {
  const c = await api("GET", "/clients/" + encodeURIComponent(id));
  $("client-detail-title").textContent = "Client " + id;
  $("client-detail-body").textContent = JSON.stringify(c, null, 2);
  $("client-detail").hidden = false;
}

async function act(resultId, what, call) {
  try {
    const answer = await call();
    $(resultId).textContent = what + ": " + JSON.stringify(answer);
    note(what);
    refreshLists();
  } catch (e) {
    if (!(e instanceof Refused)) $(resultId).textContent = what + " failed: " + e.message;
  }
}

function kick(id) {
  return act("client-result", "kicked " + id, () =>
    api("DELETE", "/clients/" + encodeURIComponent(id) + "?reason=" +
      encodeURIComponent("kicked from the console")));
}

function banClient(id) {
  return act("client-result", "banned " + id, () =>
    api("POST", "/bans", { client: id, reason: "banned from the console" }));
}

async function refreshBans() {
  const { bans } = await api("GET", "/bans");
  fill("bans", bans, (b) => {
    const row = el("tr", {},
      el("td", {}, b.id), el("td", {}, b.reason),
      el("td", {}, b.expires_at_ms ? new Date(b.expires_at_ms).toLocaleString() : "until lifted"),
      el("td", {}, button("Lift", "Lift ban " + b.id, () =>
        act("ban-result", "lifted " + b.id, () =>
          api("DELETE", "/bans/" + encodeURIComponent(b.id))))));
    row.dataset.ban = b.id;
    return row;
  });
}

// ---- forms --------------------------------------------------------------------------------

function publish(event) {
  event.preventDefault();
  const channel = $("publish-channel").value.trim();
  const text = $("publish-data").value;
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    data = text;
  }
  return act("publish-result", "published to " + channel, () =>
    api("POST", "/publish", { channel, data }));
}

function ban(event) {
  event.preventDefault();
  const body = { [$("ban-kind").value]: $("ban-target").value.trim() };
  if ($("ban-reason").value) body.reason = $("ban-reason").value;
  if ($("ban-duration").value) body.duration_secs = Number($("ban-duration").value);
  return act("ban-result", "banned " + body[$("ban-kind").value], () =>
    api("POST", "/bans", body));
}

// ---- events -------------------------------------------------------------------------------

function connectEvents() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/ws?token=" + encodeURIComponent(key));
  socket = ws;
  $("events-status").textContent = "connecting…";
  ws.onopen = () => ws.send(JSON.stringify({ op: "events", types: ["*"], id: 1 }));
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.op === "reply" && m.id === 1) {
      $("events-status").textContent = "live";
      note("events live");
    } else if (m.op === "event") {
      showEvent(m);
      if (m.type === "client.connected" || m.type === "client.disconnected") {
        // At most one list refresh per half second, however many clients come and go.
        clientsSoon = clientsSoon || setTimeout(() => {
          clientsSoon = null;
          refreshClients().catch(report);
        }, 500);
      }
    }
  };
  ws.onclose = (e) => {
    if (socket !== ws) return;
    socket = null;
    $("events-status").textContent = "disconnected (" + e.code + "), retrying…";
    // Ask the API whether the key still holds before reconnecting.
    setTimeout(() => {
      if (key && !socket) refreshStats().then(connectEvents, report);
    }, 2000);
  };
}

function showEvent(m) {
  const { op, type, seq, time, ...fields } = m;
  const detail = Object.entries(fields)
    .filter(([name, value]) => name !== "headers" && value !== null)
    .map(([name, value]) => name + "=" + (typeof value === "string" ? value : JSON.stringify(value)))
    .join(" ");
  const item = el("li", {}, el("time", {}, new Date(time).toLocaleTimeString()), " ",
    el("strong", {}, type), " ", detail);
  item.dataset.type = type;
  if (m.client) item.dataset.client = m.client;
  const list = $("events");
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// ---- wiring -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    start($("admin-key").value.trim());
  });
  $("logout-button").addEventListener("click", () => {
    stop();
    key = null;
    sessionStorage.removeItem(KEY_ITEM);
    location.reload();
  });
  $("publish-form").addEventListener("submit", publish);
  $("ban-form").addEventListener("submit", ban);
  const saved = sessionStorage.getItem(KEY_ITEM);
  if (saved) start(saved);
  note("ready");
});
