/**
 * The subset of the WebSocket API the client uses (browsers, Node 22+, and the `ws` package).
 * The handlers take `any` so that both the DOM's and `ws`'s event types fit; the client reads
 * `data` (a string for text frames) of message events and `code`/`reason` of close events.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
}

/** A WebSocket constructor: `globalThis.WebSocket`, or `WebSocket` from the `ws` package. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** A channel position: the epoch and offset of a publication. */
export interface Position {
  epoch: string;
  offset: number;
}

/** `{"op":"welcome"}`: the server's first frame on every connection. */
export interface Welcome {
  client: string;
  server: string;
  version: string;
  protocol: number;
  ping_interval_ms: number;
  max_message_bytes: number;
  max_payload_bytes: number;
}

/** A channel publication (`{"op":"message"}`). */
export interface Message<T = unknown> {
  channel: string;
  offset: number;
  epoch: string;
  /** The publishing client's id, `null` for the HTTP API. */
  from: string | null;
  data: T;
}

/** A direct message to this client (`{"op":"direct"}`). */
export interface Direct<T = unknown> {
  from: string | null;
  data: T;
}

/** The outcome of recovering one channel after a reconnect. */
export interface Recovery {
  channel: string;
  /** `false`: publications were missed and not replayed; fetch them elsewhere (e.g. `history`). */
  recovered: boolean;
  /** The channel's epoch and latest offset, from which the client carries on. */
  epoch: string;
  offset: number;
}

export interface SubscribeResult {
  channels: string[];
  changed: string[];
  recovered?: Record<string, { recovered: boolean; epoch: string; offset: number }>;
}

export interface UnsubscribeResult {
  channels: string[];
  changed: string[];
}

export interface PublishResult {
  channels: { channel: string; offset: number; epoch: string; delivered: number }[];
}

export interface HistoryOptions {
  /** Publications after this position (exclusive). */
  since?: Position;
  /** At most this many (server default 100, at most 1000). */
  limit?: number;
  /** Newest first. */
  reverse?: boolean;
}

export interface HistoryResult<T = unknown> {
  epoch: string;
  offset: number;
  publications: { offset: number; from: string | null; data: T; time_ms: number }[];
}

export interface PresenceResult {
  clients: { client: string; user: string | null }[];
}

export interface PresenceStats {
  clients: number;
  users: number;
}

export interface AuthResult {
  admin: boolean;
  user: string | null;
  channels: string[];
}

/** Events and the argument their listeners receive. */
export interface HeraldEvents {
  /** The connection is ready: welcomed, authenticated, channels resubscribed. */
  connected: Welcome;
  /** The connection ended; `reconnecting` tells whether the client will try again. */
  disconnected: { code: number; reason: string; reconnecting: boolean };
  /** The client stopped for good (close(), a 40xx close code, or a refused credential). */
  closed: { code: number; reason: string };
  message: Message;
  direct: Direct;
  /** One per channel resubscribed with a position after a reconnect. */
  recovery: Recovery;
  /** The server removed a subscription (`{"op":"unsubscribed"}`). */
  unsubscribed: { channel: string; reason: string };
  join: { channel: string; client: string; user: string | null };
  leave: { channel: string; client: string; user: string | null };
  /** Admin connections: lifecycle events (docs/events.md). */
  event: Record<string, unknown>;
  /** Errors no promise can report: refused resubscriptions, failed connects, `id: null` errors. */
  error: Error;
}
