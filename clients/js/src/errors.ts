/**
 * The client's errors: `RealtimeError` (root, with a stable `code`) >
 * `ListenError` (the server answered a LISTEN or UNLISTEN with an error),
 * `PresenceError` (the server answered a PRESENCE with an error),
 * `TokenError` (the token provider failed, e.g. `/auth/ws` answered 401 or 403),
 * `DisconnectedError` (the server closed with a code after which reconnecting would fail the
 * same way), `ClosedError` (the client was closed before the request was answered).
 */

/** The codes a RESPONSE may carry (README "Wire protocol"). */
export type ListenErrorCode = "ERR_BADAUTH" | "ERR_BADTOPIC" | "ERR_RATELIMIT" | "ERR_BADMESSAGE" | "ERR_SERVER";

/** The root of the client's errors. */
export class RealtimeError extends Error {
  /** A stable code: a protocol error code, or `TOKEN`, `DISCONNECTED`, `CLOSED`. */
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
  }
}

/** The server refused a LISTEN (none of its topics were added) or an UNLISTEN. */
export class ListenError extends RealtimeError {
  declare readonly code: ListenErrorCode | string;
  /** The server's `error_description`. */
  readonly description: string;
  /** The topics of the refused request. */
  readonly topics: readonly string[];

  constructor(code: string, description: string, topics: readonly string[]) {
    super(code, `${code}: ${description || "refused"} (${topics.join(" ")})`);
    this.name = "ListenError";
    this.description = description;
    this.topics = topics;
  }
}

/** The server refused a PRESENCE (or answered it without the counts: `ERR_SERVER`). */
export class PresenceError extends RealtimeError {
  declare readonly code: ListenErrorCode | string;
  /** The server's `error_description`. */
  readonly description: string;
  /** The topic asked about. */
  readonly topic: string;

  constructor(code: string, description: string, topic: string) {
    super(code, `${code}: ${description || "refused"} (${topic})`);
    this.name = "PresenceError";
    this.description = description;
    this.topic = topic;
  }
}

/** The token provider failed; from the default one: `/auth/ws` refused (`status` 401 or 403). */
export class TokenError extends RealtimeError {
  /** The HTTP status of `/auth/ws`, when there was one. */
  readonly status: number | undefined;

  constructor(message: string, status?: number) {
    super("TOKEN", message);
    this.name = "TokenError";
    this.status = status;
  }
}

/** The server closed with a code after which reconnecting would fail the same way. */
export class DisconnectedError extends RealtimeError {
  /** The close code. */
  readonly closeCode: number;

  constructor(closeCode: number, reason: string) {
    super("DISCONNECTED", `the server closed the connection with ${closeCode}${reason ? ` (${reason})` : ""}`);
    this.name = "DisconnectedError";
    this.closeCode = closeCode;
  }
}

/** The client was closed (`close()`) before the request was answered. */
export class ClosedError extends RealtimeError {
  constructor() {
    super("CLOSED", "the client is closed");
    this.name = "ClosedError";
  }
}
