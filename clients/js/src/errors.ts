/**
 * An error reported by the server (`{"error":{"code","message"}}` in a reply), or by the
 * client itself for conditions the server cannot report (codes in {@link ClientErrorCode}).
 * Switch on `code`, never on `message`.
 */
export class HeraldError extends Error {
  /** The server's error code (docs/errors.md), or one of {@link ClientErrorCode}. */
  readonly code: string;
  /** The request that failed, when there was one (without its `id`). */
  readonly request?: Record<string, unknown>;

  constructor(code: string, message: string, request?: Record<string, unknown>) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
    this.request = request;
  }
}

/**
 * Codes the client uses for failures the server does not answer:
 * - `disconnected`: the connection ended before the reply came (the request may or may not
 *   have been carried out);
 * - `closed`: {@link HeraldClient.close} was called;
 * - `timeout`: no reply within `requestTimeoutMs`;
 * - `connect_failed`: the WebSocket could not be opened (the handshake was refused or the
 *   server is unreachable); reported through the `error` event, the client keeps retrying.
 */
export type ClientErrorCode = "disconnected" | "closed" | "timeout" | "connect_failed";
