/**
 * The server's close codes: which ones the client retries after.
 *
 * A copy of `DISCONNECTS` in the server's `realtime/disconnect.py` (code, the reason the
 * server sends in the CLOSE frame, whether to reconnect). `tests/unit/test_js_client.py` in
 * the server's repository checks that the two tables hold the same rows, so keep one row a
 * line in this exact shape.
 */

/** One row of the close-code table. */
export interface CloseCodeRow {
  /** The reason the server sends in the CLOSE frame. */
  readonly reason: string;
  /** Whether reconnecting may succeed; `false`: it would fail the same way (a client bug). */
  readonly reconnect: boolean;
}

/** Why the server closes a connection, by close code (RFC 6455 section 7.4; 4000-4499 are ours). */
export const CLOSE_CODES: Readonly<Record<number, CloseCodeRow>> = Object.freeze({
  1001: { reason: "server shutting down", reconnect: true },
  1002: { reason: "protocol error", reconnect: false },
  1007: { reason: "invalid data", reconnect: false },
  1009: { reason: "message too big", reconnect: false },
  1011: { reason: "internal error", reconnect: true },
  4001: { reason: "no LISTEN in time", reconnect: true },
  4002: { reason: "idle timeout", reconnect: true },
  4003: { reason: "too many invalid tokens", reconnect: true },
  4008: { reason: "slow consumer", reconnect: true },
});

/**
 * Whether to reconnect after the server closed with `code`: the table's answer, and `true`
 * for any code not in it (a proxy's, 1006 for a connection that dropped): it may be transient.
 */
export function shouldReconnect(code: number | undefined): boolean {
  const row = code === undefined ? undefined : CLOSE_CODES[code];
  return row === undefined ? true : row.reconnect;
}
