/** The client's options and events. */

import type { Position } from "./positions.js";
import type { TokenProvider } from "./tokens.js";

/** What the client needs of a WebSocket: the browser's, or `ws`'s on Node 20. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: never) => void) | null;
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
}

/** A WebSocket constructor (`globalThis.WebSocket`, or `WebSocket` from the `ws` package). */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Time and timers, injectable for tests (milliseconds). */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The options of `new RealtimeClient(options)`; every timing is in milliseconds. */
export interface RealtimeClientOptions {
  /** The server's base URL (`https://rt.example.com`); default: the page's origin. */
  url?: string;
  /** Or several instances' base URLs: each reconnect tries the next one. */
  urls?: string[];
  /** Topics to LISTEN to once connected (kept across reconnects). */
  topics?: string[];
  /** Positions to resume from, `{topic: {offset, epoch}}` (a previous client's `positions`). */
  since?: Record<string, Position>;
  /**
   * What others see of this client in presence and in `join`/`leave` (a JSON object of at most
   * 512 bytes nested at most 3 deep, e.g. `{device: "living room tv"}`; never a secret). Sent
   * with every LISTEN, on every connection.
   */
  clientInfo?: Record<string, unknown>;
  /**
   * Returns a WS token (or `{token, expiresIn}`, or `null` for none). Default: `POST /auth/ws`
   * on the server with `credentials: "include"` (a logged-in page's session cookie).
   * `null`: send no token (public topics only).
   */
  tokenProvider?: TokenProvider | null;
  /** The WebSocket implementation; default `globalThis.WebSocket` (pass `ws`'s on Node 20). */
  WebSocket?: WebSocketConstructor;
  /** The first reconnect window (full jitter: the delay is random in [0, window)). Default 1000. */
  backoffInitialMs?: number;
  /** The largest reconnect window. Default 120000. */
  backoffMaxMs?: number;
  /** Time between PINGs, under the server's idle timeout (330 s). Default 240000. */
  pingIntervalMs?: number;
  /** Up to this much is added to each PING interval at random. Default 30000. */
  pingJitterMs?: number;
  /** No PONG within this long closes the connection and reconnects. Default 10000. */
  pongTimeoutMs?: number;
  /** Fetch a new token this long before the current one expires (at most half its lifetime). Default 60000. */
  refreshMarginMs?: number;
  /** How long to wait for a RESPONSE, or for a connection to open. Default 10000. */
  responseTimeoutMs?: number;
  /** Time and timers (tests inject a fake clock). */
  clock?: Clock;
  /** A source of numbers in [0, 1) for the jitter (tests inject one). */
  random?: () => number;
}

/** A publication on a LISTENed topic. */
export interface RealtimeMessage {
  topic: string;
  /** As published: a JSON value that is not a string arrives JSON-encoded (`JSON.parse` it). */
  message: string;
  /** The offset in the topic's stream, on topics with history. */
  offset?: number;
  /** The stream's epoch, on topics with history. */
  epoch?: string;
}

/** One listening connection in a topic's presence. */
export interface PresenceClient {
  /** The `sub` of the token its LISTEN carried; `null` without one. */
  user: string | null;
  /** An opaque id of the connection (random per server start; never an address). */
  client: string;
  /** Its LISTEN's `clientInfo` (`{}` without one). */
  info: Record<string, unknown>;
}

/** What `presence(topic)` resolves to: who listens to the topic, on every instance. */
export interface PresenceData {
  /** Listening connections. */
  connections: number;
  /** Distinct users among them (connections without a token are not counted). */
  users: number;
  /** The connections, sorted by `client`; absent when more than the server's `PRESENCE_MAX_CLIENTS`. */
  clients?: PresenceClient[];
}

/** A connection started (`join`) or stopped (`leave`) listening to `topic`. */
export interface PresenceEvent extends PresenceClient {
  topic: string;
}

/** The events and what each listener receives. */
export interface RealtimeEvents {
  /** A publication (duplicates of one already delivered are dropped). */
  message: RealtimeMessage;
  /** Publications on these topics may have been missed: refetch their state. */
  gap: { topics: string[]; reason: string | undefined };
  /** On a topic whose rule has `join_leave`: a connection started listening (this client's own too). */
  join: PresenceEvent;
  /** The same when one stopped (UNLISTEN, close, token expiry, its server stopped or died). */
  leave: PresenceEvent;
  /** These topics stopped (their token expired or was revoked); `listen()` again to retry. */
  authRevoked: { topics: string[] };
  /** The client waits `delay` ms before it connects again. */
  reconnecting: { delay: number; reason: string; attempt: number };
  /** Connected and every topic LISTENed (with `since` where known: what was missed follows). */
  connected: { url: string; reconnected: boolean; topics: string[] };
  /** A connection ended; `willRetry` false: the client stopped (see `error`). */
  disconnected: { code: number; reason: string; willRetry: boolean };
  /** The client stopped for good: refused credentials, a refused re-LISTEN, or a close code that says so. */
  error: { error: Error };
}

/** The options of `listen()`. */
export interface ListenOptions {
  /** Resume these topics from these positions (ignored for a topic already listened to). */
  since?: Record<string, Position>;
}
