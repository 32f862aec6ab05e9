import { HeraldError } from "./errors.js";
import type {
  AuthResult,
  HeraldEvents,
  HistoryOptions,
  HistoryResult,
  Message,
  Position,
  PresenceResult,
  PresenceStats,
  PublishResult,
  SubscribeResult,
  UnsubscribeResult,
  Welcome,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

export interface HeraldOptions {
  /** The native endpoint, e.g. `ws://127.0.0.1:8080/ws` (`http(s)://` is turned into `ws(s)://`). */
  url: string;
  /** The admin key or a JWT connection token. None: an anonymous connection. */
  token?: string;
  /**
   * Called when the server refuses the token with `token_expired`; its result is the token
   * used from then on (auth is retried at once). Return `null` to give up (the client stops).
   */
  refreshToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /**
   * How the token is presented. `"auth"` (default): with `{"op":"auth"}` as the connection's
   * first request, so the server's error code (e.g. `token_expired`) is seen in every runtime.
   * `"query"`: as `?token=` on the URL, checked at the handshake (needed when the auth hook must
   * see the credential at connect). A refused handshake carries no code a WebSocket can read, so
   * in this mode an expired JWT is detected from its `exp` claim before each connect.
   */
  tokenIn?: "auth" | "query";
  /** A WebSocket constructor; default `globalThis.WebSocket` (browsers, Node 22+). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect when the connection is lost (default true). */
  reconnect?: boolean;
  /** Back-off: first delay and cap, in ms (defaults 250 and 10000), with jitter. */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** How long a sent request waits for its reply (default 10000 ms). */
  requestTimeoutMs?: number;
}

type Frame = Record<string, unknown>;
type Listener<K extends keyof HeraldEvents> = (event: HeraldEvents[K]) => void;

interface Request {
  frame: Frame;
  /** Safe to send again on the next connection if the connection ends before the reply. */
  idempotent: boolean;
  resolve: (result: any) => void;
  reject: (error: HeraldError) => void;
  timer?: ReturnType<typeof setTimeout>;
}

/** A channel token or JWT subscription token, or a function that gets a fresh one. */
export type SubscriptionToken = string | (() => string | Promise<string>);

interface Subscription {
  token?: SubscriptionToken;
  /** The server accepted it once: resubscribed after every reconnect. */
  confirmed: boolean;
}

const IDEMPOTENT = new Set(["subscribe", "unsubscribe", "history", "presence", "presence_stats", "ping"]);
/** Names per subscribe request when resubscribing (the server's default max_channels_per_request). */
const CHUNK = 100;
/** How many times one connection asks for a fresh token before giving up. */
const MAX_REFRESHES = 3;

/**
 * A connection to Herald's native protocol that survives disconnects: it reconnects with
 * exponential back-off and jitter, authenticates again, and resubscribes every channel with
 * recovery from the last position it saw.
 */
export class HeraldClient {
  /** This connection's client id (from the welcome frame); a new one after each reconnect. */
  clientId: string | null = null;
  /** The last welcome frame. */
  welcome: Welcome | null = null;
  /** The last successful `auth` result (token connections). */
  auth: AuthResult | null = null;

  private readonly opts: Required<Omit<HeraldOptions, "token" | "refreshToken" | "WebSocket">> &
    Pick<HeraldOptions, "refreshToken">;
  private readonly Ctor: WebSocketConstructor;
  private token: string | undefined;
  private ws: WebSocketLike | null = null;
  /** Incremented for every socket: callbacks of older sockets are ignored. */
  private gen = 0;
  private ready = false;
  private stopped = true;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private nextId = 1;
  private readonly inFlight = new Map<number, Request>();
  private queue: Request[] = [];
  private readonly subs = new Map<string, Subscription>();
  private readonly positions = new Map<string, Position>();
  private readonly listeners = new Map<keyof HeraldEvents, Set<(e: any) => void>>();
  private closeWaiters: (() => void)[] = [];

  constructor(options: HeraldOptions) {
    const Ctor = options.WebSocket ?? (globalThis as any).WebSocket;
    if (!Ctor) throw new TypeError("no global WebSocket: pass the `WebSocket` option (e.g. from the `ws` package)");
    this.Ctor = Ctor;
    this.token = options.token;
    this.opts = {
      url: options.url.replace(/^http/, "ws"),
      refreshToken: options.refreshToken,
      tokenIn: options.tokenIn ?? "auth",
      reconnect: options.reconnect ?? true,
      minDelayMs: options.minDelayMs ?? 250,
      maxDelayMs: options.maxDelayMs ?? 10_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
    };
  }

  /** Listens to an event; returns a function that removes the listener. */
  on<K extends keyof HeraldEvents>(event: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => set!.delete(listener);
  }

  /** Whether the connection is up and ready (authenticated, resubscribed). */
  get connected(): boolean {
    return this.ready;
  }

  /**
   * Starts connecting (and reconnecting). Resolves with the welcome frame once the connection
   * is ready; rejects if the client stops first. Requests made before are queued.
   */
  connect(): Promise<Welcome> {
    if (this.ready && this.welcome) return Promise.resolve(this.welcome);
    const done = new Promise<Welcome>((resolve, reject) => {
      const offs = [
        this.on("connected", (w) => (offs.forEach((f) => f()), resolve(w))),
        this.on("closed", (c) => (offs.forEach((f) => f()), reject(new HeraldError("closed", `client closed: ${c.code} ${c.reason}`)))),
      ];
    });
    if (this.stopped) {
      this.stopped = false;
      this.open();
    }
    return done;
  }

  /** Stops the client: closes the socket, rejects what is waiting with code `closed`. */
  close(): Promise<void> {
    const closing = new Promise<void>((resolve) => {
      if (!this.ws) return resolve();
      const t = setTimeout(resolve, 2000);
      this.closeWaiters.push(() => (clearTimeout(t), resolve()));
    });
    this.stop(1000, "");
    return closing;
  }

  /**
   * Subscribes to channels. `token`: a channel token or JWT subscription token (one channel),
   * or a function returning one, called for this request and again at every resubscription
   * (so that an expiring subscription token can be renewed).
   */
  async subscribe(channels: string | string[], options: { token?: SubscriptionToken } = {}): Promise<SubscribeResult> {
    const list = toList(channels);
    const added = list.filter((c) => !this.subs.has(c));
    for (const c of added) this.subs.set(c, { token: options.token, confirmed: false });
    const frame: Frame = { op: "subscribe", channels: list };
    let result: SubscribeResult;
    try {
      if (options.token !== undefined) frame.token = await tokenOf(options.token);
      result = await this.request<SubscribeResult>(frame);
    } catch (e) {
      for (const c of added) if (!this.subs.get(c)?.confirmed) this.subs.delete(c);
      throw e;
    }
    for (const c of list) {
      const s = this.subs.get(c);
      if (s) s.confirmed = true;
    }
    await this.learnPositions(list);
    return result;
  }

  /** Unsubscribes; the channels are no longer resubscribed after a reconnect. */
  unsubscribe(channels: string | string[]): Promise<UnsubscribeResult> {
    const list = toList(channels);
    for (const c of list) {
      this.subs.delete(c);
      this.positions.delete(c);
    }
    return this.request<UnsubscribeResult>({ op: "unsubscribe", channels: list });
  }

  /** Publishes `data` (any JSON) to channels; `to` restricts delivery to these client ids. */
  publish(channels: string | string[], data: unknown, options: { to?: string[] } = {}): Promise<PublishResult> {
    const frame: Frame = { op: "publish", channels: toList(channels), data };
    if (options.to) frame.to = options.to;
    return this.request<PublishResult>(frame);
  }

  /** Sends a direct message to one client. */
  send(to: string, data: unknown): Promise<{ sent: boolean }> {
    return this.request({ op: "send", to, data });
  }

  /** A channel's kept publications (channels with `history_size`). */
  history<T = unknown>(channel: string, options: HistoryOptions = {}): Promise<HistoryResult<T>> {
    return this.request({ op: "history", channel, ...options });
  }

  /** Who is in a channel (channels with the `presence` option). */
  presence(channel: string): Promise<PresenceResult> {
    return this.request({ op: "presence", channel });
  }

  presenceStats(channel: string): Promise<PresenceStats> {
    return this.request({ op: "presence_stats", channel });
  }

  /** An application-level round trip. */
  ping(): Promise<{ pong: boolean }> {
    return this.request({ op: "ping" });
  }

  /** The position (epoch, offset) of the last message seen on a channel. */
  position(channel: string): Position | undefined {
    return this.positions.get(channel);
  }

  /**
   * Sends any request (e.g. an admin op such as `{op:"clients"}`) and resolves with its
   * `result`, or rejects with a {@link HeraldError}. Waits for the connection if it is down.
   */
  request<T = any>(frame: Frame): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.stopped && this.gen > 0) {
        return reject(new HeraldError("closed", "the client is closed", frame));
      }
      const req: Request = { frame, idempotent: IDEMPOTENT.has(String(frame.op)), resolve, reject };
      if (this.ready) this.transmit(req);
      else this.queue.push(req);
    });
  }

  // ---- connection life cycle ----

  private async open(): Promise<void> {
    if (this.stopped) return;
    const gen = ++this.gen;
    let url = this.opts.url;
    if (this.token && this.opts.tokenIn === "query") {
      if (jwtExpired(this.token) && this.opts.refreshToken) {
        const fresh = await this.refresh();
        if (gen !== this.gen || this.stopped) return;
        if (!fresh) return this.stop(4001, "token expired and not refreshed");
      }
      url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
    }
    let ws: WebSocketLike;
    try {
      ws = new this.Ctor(url);
    } catch (e) {
      this.emit("error", new HeraldError("connect_failed", String(e)));
      return this.retry(1006);
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (gen !== this.gen || typeof ev.data !== "string") return;
      // The welcome frame is always the first: authenticate and resubscribe after it.
      if (this.onFrame(ev.data) === "welcome") this.setUp(gen).catch((e) => this.emit("error", e));
    };
    ws.onerror = () => {}; // a close event follows
    ws.onclose = (ev: { code: number; reason: string }) => {
      const waiters = this.closeWaiters;
      this.closeWaiters = [];
      waiters.forEach((f) => f());
      if (gen !== this.gen) return;
      this.ws = null;
      if (!opened) this.emit("error", new HeraldError("connect_failed", `cannot connect to ${this.opts.url} (close ${ev.code})`));
      this.onClose(ev.code, ev.reason, opened);
    };
  }

  /** After the socket opened: authenticate, resubscribe, then send what was queued. */
  private async setUp(gen: number): Promise<void> {
    if (this.token && this.opts.tokenIn === "auth") {
      for (let refreshes = 0; ; refreshes++) {
        try {
          this.auth = await this.call<AuthResult>({ op: "auth", token: this.token });
          break;
        } catch (e) {
          if (gen !== this.gen) return;
          const code = (e as HeraldError).code;
          if (code === "token_expired" && this.opts.refreshToken && refreshes < MAX_REFRESHES) {
            if (await this.refresh()) continue;
            if (gen !== this.gen) return;
          }
          // Lost or stuck: close (4100, as the server does for trouble worth a back-off) and retry.
          if (code === "disconnected" || code === "timeout") return this.ws?.close(4100, "auth timed out");
          this.emit("error", e as Error);
          return this.stop(4001, `auth refused: ${code}`);
        }
      }
    }
    await this.resubscribe(gen);
    if (gen !== this.gen || !this.ws) return;
    this.ready = true;
    this.attempt = 0;
    const queued = this.queue;
    this.queue = [];
    queued.forEach((r) => this.transmit(r));
    this.emit("connected", this.welcome!);
  }

  private async refresh(): Promise<string | null> {
    try {
      const fresh = await this.opts.refreshToken!();
      this.token = fresh ?? undefined;
      return fresh ?? null;
    } catch (e) {
      this.emit("error", e as Error);
      return null;
    }
  }

  /** Subscribes again to every confirmed channel, recovering from the last position seen. */
  private async resubscribe(gen: number): Promise<void> {
    const groups: { channels: string[]; token?: SubscriptionToken }[] = [];
    let plain: string[] = [];
    for (const [channel, s] of this.subs) {
      if (!s.confirmed) continue;
      if (s.token !== undefined) groups.push({ channels: [channel], token: s.token });
      else if (plain.push(channel) === CHUNK) (groups.push({ channels: plain }), (plain = []));
    }
    if (plain.length) groups.push({ channels: plain });
    await Promise.all(groups.map(({ channels, token }) => this.subscribeAgain(gen, channels, token)));
  }

  /**
   * Subscribes again to channels, recovering each from its last position. A refusal (e.g. an
   * expired subscription token) drops the channels and is reported as an `error` event.
   */
  private async subscribeAgain(gen: number, channels: string[], token?: SubscriptionToken): Promise<void> {
    const frame: Frame = { op: "subscribe", channels };
    const recover: Record<string, Position> = {};
    for (const c of channels) {
      const p = this.positions.get(c);
      if (p) recover[c] = p;
    }
    if (Object.keys(recover).length) frame.recover = recover;
    try {
      if (token !== undefined) frame.token = await tokenOf(token);
      const result = await this.call<SubscribeResult>(frame);
      for (const [channel, r] of Object.entries(result.recovered ?? {})) {
        this.positions.set(channel, { epoch: r.epoch, offset: r.offset });
        this.emit("recovery", { channel, ...r });
      }
      await this.learnPositions(channels.filter((c) => !recover[c]));
    } catch (e) {
      if (gen !== this.gen || isClientCode((e as HeraldError).code)) return;
      for (const c of channels) {
        this.subs.delete(c);
        this.positions.delete(c);
      }
      this.emit("error", e as Error);
    }
  }

  /**
   * Asks for the current position of channels where no message was seen yet, so that a
   * reconnect recovers what was published while away even then. Messages delivered before
   * the answer carry newer or equal positions; the higher one wins.
   */
  private async learnPositions(channels: string[]): Promise<void> {
    await Promise.all(
      channels
        .filter((c) => !this.positions.has(c))
        .map(async (channel) => {
          try {
            const h = await this.call<HistoryResult>({ op: "history", channel, limit: 1, reverse: true });
            const seen = this.positions.get(channel);
            if (h.epoch && this.subs.has(channel) && !(seen && seen.epoch === h.epoch && seen.offset >= h.offset)) {
              this.positions.set(channel, { epoch: h.epoch, offset: h.offset });
            }
          } catch {
            // No position: the next reconnect subscribes without recovery.
          }
        }),
    );
  }

  private onClose(code: number, reason: string, opened: boolean): void {
    this.ready = false;
    const again: Request[] = [];
    for (const r of this.inFlight.values()) {
      clearTimeout(r.timer);
      if (r.idempotent) again.push(r);
      else r.reject(new HeraldError("disconnected", `connection closed (${code}) before the reply`, r.frame));
    }
    this.inFlight.clear();
    this.queue = [...again, ...this.queue];
    // 4000-4099: the server says don't reconnect (kicked for good, banned).
    const reconnecting = this.opts.reconnect && !(code >= 4000 && code < 4100);
    if (opened) this.emit("disconnected", { code, reason, reconnecting });
    if (reconnecting) this.retry(code);
    else this.stop(code, reason);
  }

  private retry(code: number): void {
    const { minDelayMs, maxDelayMs } = this.opts;
    // 4200-4299: reconnect at once (a little jitter so a mass kick is not a stampede).
    const base = code >= 4200 && code < 4300 ? minDelayMs : Math.min(maxDelayMs, minDelayMs * 2 ** this.attempt++);
    const delay = base / 2 + Math.random() * (base / 2);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.open();
    }, delay);
  }

  private stop(code: number, reason: string): void {
    const wasRunning = !this.stopped || this.ws !== null;
    const wasUp = this.ws?.readyState === 1; // OPEN
    this.stopped = true;
    this.ready = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const ws = this.ws;
    this.ws = null;
    this.gen++;
    const err = (r: Request) => (clearTimeout(r.timer), r.reject(new HeraldError("closed", "the client is closed", r.frame)));
    [...this.inFlight.values(), ...this.queue].forEach(err);
    this.inFlight.clear();
    this.queue = [];
    if (ws) ws.close(1000);
    if (wasUp) this.emit("disconnected", { code, reason, reconnecting: false });
    if (wasRunning) this.emit("closed", { code, reason });
  }

  // ---- frames ----

  /** Sends a request on the current socket now, even before the connection is ready. */
  private call<T>(frame: Frame): Promise<T> {
    return new Promise<T>((resolve, reject) => this.transmit({ frame, idempotent: false, resolve, reject }));
  }

  private transmit(req: Request): void {
    const ws = this.ws;
    if (!ws) return req.reject(new HeraldError("disconnected", "not connected", req.frame));
    const id = this.nextId++;
    this.inFlight.set(id, req);
    req.timer = setTimeout(() => {
      if (this.inFlight.delete(id)) req.reject(new HeraldError("timeout", `no reply to ${String(req.frame.op)} in ${this.opts.requestTimeoutMs} ms`, req.frame));
    }, this.opts.requestTimeoutMs);
    ws.send(JSON.stringify({ ...req.frame, id }));
  }

  /** Handles one frame from the server; returns its op. */
  private onFrame(text: string): string | void {
    let f: any;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    switch (f.op) {
      case "welcome":
        this.welcome = f;
        this.clientId = f.client;
        return "welcome";
      case "reply": {
        const req = typeof f.id === "number" ? this.inFlight.get(f.id) : undefined;
        if (!req) {
          if (f.error) this.emit("error", new HeraldError(f.error.code, f.error.message));
          return;
        }
        this.inFlight.delete(f.id);
        clearTimeout(req.timer);
        if (f.error) req.reject(new HeraldError(String(f.error.code), String(f.error.message), req.frame));
        else req.resolve(f.result);
        return;
      }
      case "message": {
        const seen = this.positions.get(f.channel);
        if (seen && seen.epoch === f.epoch && f.offset <= seen.offset) return; // already delivered
        if (this.subs.has(f.channel)) this.positions.set(f.channel, { epoch: f.epoch, offset: f.offset });
        this.emit("message", f as Message);
        return;
      }
      case "direct":
        return this.emit("direct", { from: f.from, data: f.data });
      case "unsubscribed":
        if (f.reason === "broker_reconnected" && this.subs.has(f.channel)) {
          // Publications may have been lost in the cluster: subscribe again with recovery.
          void this.subscribeAgain(this.gen, [f.channel], this.subs.get(f.channel)!.token);
        } else {
          this.subs.delete(f.channel);
          this.positions.delete(f.channel);
        }
        return this.emit("unsubscribed", { channel: f.channel, reason: f.reason });
      case "join":
      case "leave":
        return this.emit(f.op, { channel: f.channel, client: f.client, user: f.user });
      case "event":
        return this.emit("event", f);
    }
  }

  private emit<K extends keyof HeraldEvents>(event: K, value: HeraldEvents[K]): void {
    for (const listener of [...(this.listeners.get(event) ?? [])]) {
      try {
        listener(value);
      } catch (e) {
        if (event !== "error") this.emit("error", e as Error);
      }
    }
  }
}

function tokenOf(token: SubscriptionToken): string | Promise<string> {
  return typeof token === "function" ? token() : token;
}

function toList(channels: string | string[]): string[] {
  return typeof channels === "string" ? [channels] : [...channels];
}

function isClientCode(code: string): boolean {
  return code === "disconnected" || code === "timeout" || code === "closed";
}

/** Whether `token` is a JWT whose `exp` claim has passed (false for anything else). */
function jwtExpired(token: string): boolean {
  const parts = token.split(".");
  if (parts.length !== 3) return false;
  try {
    const claims = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();
  } catch {
    return false;
  }
}
