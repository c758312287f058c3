/**
 * `RealtimeClient`: a reconnecting LISTEN client for the realtime server, in browsers and Node.
 *
 * The behavioural model is the server's Python SDK (`realtime/client.py`): tokens from a
 * provider refreshed before they expire, PING/PONG keepalive, reconnects with capped
 * exponential backoff (full jitter) unless the close code says not to, at once after
 * RECONNECT, re-LISTEN of every topic with its last offset and epoch as `since` (history
 * recovery) and duplicate offsets dropped. Presence: `clientInfo` with every LISTEN,
 * `presence(topic)`, and `join`/`leave` events.
 */

import { backoffDelay } from "./backoff.js";
import { CLOSE_CODES, shouldReconnect } from "./closeCodes.js";
import { Emitter } from "./emitter.js";
import { ClosedError, DisconnectedError, ListenError, PresenceError, RealtimeError, TokenError } from "./errors.js";
import { Positions, type Position } from "./positions.js";
import { checkClientInfo, presenceData, presenceEvent } from "./presence.js";
import { authWsProvider, tokenLifetime, type TokenProvider } from "./tokens.js";
import type {
  Clock,
  ListenOptions,
  PresenceData,
  RealtimeClientOptions,
  RealtimeEvents,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

/** LISTEN refusals that may pass later: while (re)connecting they are retried with backoff. */
const TRANSIENT_REFUSALS = new Set(["ERR_RATELIMIT", "ERR_SERVER"]);
/** The close code this client uses when it drops a connection itself (no PONG, a timeout). */
const CLIENT_ABORT = 4000;
const OPEN = 1;

type TimerName = "reconnect" | "ping" | "pong" | "refresh" | "connect";

/** A server frame (only the fields the client reads). */
interface Frame {
  type?: unknown;
  nonce?: unknown;
  error?: unknown;
  error_description?: unknown;
  data?: { topic?: unknown; topics?: unknown; message?: unknown; offset?: unknown; epoch?: unknown; reason?: unknown };
}

/** A request of the caller's, kept until a connection answers it. */
type Job =
  | {
      kind: "LISTEN" | "UNLISTEN";
      topics: string[]; // a queued LISTEN loses those unlistened before it is sent
      resolve: () => void;
      reject: (error: Error) => void;
    }
  | { kind: "PRESENCE"; topic: string; resolve: (data: PresenceData) => void; reject: (error: Error) => void };

/** A request on the wire, waiting for its RESPONSE. */
interface Pending {
  resolve: (frame: Frame) => void;
  reject: (error: Error) => void;
  timer: unknown;
}

/** The connection ended before the RESPONSE (internal: the request is sent again, or dropped). */
class LostError extends RealtimeError {
  constructor() {
    super("LOST", "the connection was lost");
  }
}

const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

function baseOf(url: string): string {
  return url.replace(/\/+$/, "").replace(/\/ws$/, "").replace(/^ws/, "http");
}

/** Close `ws` with `code` and `reason` (ASCII, cut to fit a CLOSE frame); never throws. */
function closeQuietly(ws: WebSocketLike, code: number, reason: string): void {
  try {
    ws.close(code, reason.replace(/[^\x20-\x7e]/g, "?").slice(0, 120));
  } catch {
    try {
      ws.close();
    } catch {
      // already closed
    }
  }
}

function strings(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((t): t is string => typeof t === "string") : [];
}

/**
 * A reconnecting client: `listen()` topics, get `message` events.
 *
 * ```js
 * const client = new RealtimeClient({ url: "https://rt.example.com" });
 * client.on("message", ({ topic, message }) => console.log(topic, message));
 * await client.listen(["dream:update.abc"]);
 * ```
 */
export class RealtimeClient extends Emitter<RealtimeEvents> {
  private readonly urls: string[];
  private readonly WS: WebSocketConstructor;
  private readonly provider: TokenProvider | null;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly opts: Required<
    Pick<
      RealtimeClientOptions,
      | "backoffInitialMs"
      | "backoffMaxMs"
      | "pingIntervalMs"
      | "pingJitterMs"
      | "pongTimeoutMs"
      | "refreshMarginMs"
      | "responseTimeoutMs"
    >
  >;
  private readonly clientInfo: Record<string, unknown> | undefined;
  private readonly listened = new Set<string>();
  private readonly track: Positions;
  private readonly queue: Job[] = [];
  private readonly pending = new Map<string, Pending>();
  private ws: WebSocketLike | null = null;
  private opened = false;
  private ready = false;
  private everReady = false;
  private started = false;
  private closed = false;
  private failure: Error = new ClosedError();
  private attempt = 0;
  private nonce = 0;
  private urlIndex = 0;
  private readonly timers: Record<TimerName, unknown> = {
    reconnect: undefined,
    ping: undefined,
    pong: undefined,
    refresh: undefined,
    connect: undefined,
  };
  private token: { value: string | null; refreshAt: number } | undefined;
  private tokenFetch: Promise<string | null> | undefined;
  private readyWaiters: Array<[() => void, (error: Error) => void]> = [];
  /** Connections made after the first. */
  reconnects = 0;

  /**
   * @throws Error no URL (and no page origin), or no WebSocket implementation.
   * @throws RangeError a `since` entry out of range, or a `clientInfo` nested deeper than 3 levels
   *   or longer than 512 bytes as JSON.
   * @throws TypeError a `clientInfo` that is not a JSON object.
   */
  constructor(options: RealtimeClientOptions = {}) {
    super();
    const origin = (globalThis as { location?: { origin?: string } }).location?.origin;
    const urls = options.urls ?? (options.url !== undefined ? [options.url] : origin ? [origin] : []);
    if (!urls.length) throw new Error("RealtimeClient needs a url (or urls)");
    this.urls = urls.map(baseOf);
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WS === undefined) throw new Error("no WebSocket implementation: pass one as the WebSocket option");
    this.WS = WS;
    this.provider =
      options.tokenProvider === undefined ? () => authWsProvider(this.url)() : options.tokenProvider;
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.opts = {
      backoffInitialMs: options.backoffInitialMs ?? 1000,
      backoffMaxMs: options.backoffMaxMs ?? 120_000,
      pingIntervalMs: options.pingIntervalMs ?? 240_000,
      pingJitterMs: options.pingJitterMs ?? 30_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      refreshMarginMs: options.refreshMarginMs ?? 60_000,
      responseTimeoutMs: options.responseTimeoutMs ?? 10_000,
    };
    this.track = new Positions(options.since);
    this.clientInfo = options.clientInfo === undefined ? undefined : checkClientInfo(options.clientInfo);
    for (const topic of options.topics ?? []) this.listened.add(topic);
  }

  /** The base URL of the current (or next) connection. */
  get url(): string {
    return this.urls[this.urlIndex] as string;
  }

  /** The topics listened to (LISTENed again on every reconnect). */
  get topics(): string[] {
    return [...this.listened];
  }

  /** Whether connected with every topic LISTENed. */
  get connected(): boolean {
    return this.ready;
  }

  /** The last `{offset, epoch}` per topic with history: save it to resume later with `since`. */
  get positions(): Record<string, Position> {
    return this.track.snapshot();
  }

  /** Publications not delivered because their offset was already delivered (same epoch). */
  get duplicatesDropped(): number {
    return this.track.duplicatesDropped;
  }

  /**
   * Connect (once) and LISTEN to the constructor's topics. Resolves when connected, retrying
   * failures with backoff for as long as it takes; rejects when the client stops (`error`).
   */
  connect(): Promise<void> {
    if (this.closed) return Promise.reject(this.failure);
    if (this.ready) return Promise.resolve();
    const promise = new Promise<void>((resolve, reject) => this.readyWaiters.push([resolve, reject]));
    this.start();
    return promise;
  }

  /**
   * LISTEN to `topics` (connecting first if needed). Settled by the server's RESPONSE to this
   * request; if the connection drops before it, the request is sent again on the next one.
   *
   * @throws ListenError the server refused (none of the topics were added): `.code` is
   *   `ERR_BADAUTH`, `ERR_BADTOPIC`, `ERR_RATELIMIT`, `ERR_BADMESSAGE` or `ERR_SERVER`.
   * @throws TokenError the token provider refused; ClosedError the client was closed.
   */
  listen(topics: string[], options: ListenOptions = {}): Promise<void> {
    const fresh = Object.entries(options.since ?? {}).filter(([topic]) => !this.listened.has(topic));
    if (fresh.length) this.track.set(Object.fromEntries(fresh));
    return new Promise((resolve, reject) => this.run({ kind: "LISTEN", topics: [...topics], resolve, reject }));
  }

  /**
   * Stop listening to `topics` (their positions are forgotten). Settled by the RESPONSE when
   * connected; at once when not (nothing to tell the server).
   */
  unlisten(topics: string[]): Promise<void> {
    const gone = new Set(topics);
    for (const topic of topics) this.listened.delete(topic);
    this.track.forget(topics);
    for (const job of this.queue) {
      if (job.kind === "PRESENCE") continue;
      job.topics = job.topics.filter((t) => !gone.has(t)); // not sent yet
      if (!job.topics.length) job.resolve();
    }
    this.queue.splice(0, this.queue.length, ...this.queue.filter((j) => j.kind === "PRESENCE" || j.topics.length));
    if (!this.ready) return Promise.resolve();
    return new Promise((resolve, reject) => this.run({ kind: "UNLISTEN", topics: [...topics], resolve, reject }));
  }

  /**
   * Who listens to `topic` now, on every instance (connecting first if needed). Whoever may
   * LISTEN to the topic may ask (and a token with `realtime:presence`); the topic's rule must
   * keep presence. Sent with this client's token; if the connection drops before the answer,
   * asked again on the next one.
   *
   * @throws PresenceError the server refused: `.code` is `ERR_BADAUTH` (e.g. another user's
   *   `remote-control:command.<id>`), `ERR_BADTOPIC` (unknown, or its rule keeps no presence),
   *   `ERR_RATELIMIT` (counts against `LISTEN_RATE`), `ERR_BADMESSAGE` or `ERR_SERVER`.
   * @throws TokenError the token provider refused; ClosedError the client was closed.
   */
  presence(topic: string): Promise<PresenceData> {
    return new Promise((resolve, reject) => this.run({ kind: "PRESENCE", topic, resolve, reject }));
  }

  /** Close the connection and stop; pending requests reject with `ClosedError`. */
  close(): void {
    this.stop(new ClosedError(), false);
  }

  // -- connection ------------------------------------------------------------------

  private start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    this.open();
  }

  private open(): void {
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url.replace(/^http/, "ws") + "/ws");
    } catch (err) {
      this.stop(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    this.ws = ws;
    this.opened = false;
    this.setTimer("connect", this.opts.responseTimeoutMs, () => this.abandon(ws, "the connection did not open in time"));
    ws.onopen = () => {
      this.clearTimer("connect");
      void this.onOpen(ws);
    };
    ws.onmessage = (event: { data: unknown }) => {
      if (this.ws === ws && typeof event.data === "string") this.onFrame(ws, event.data);
    };
    ws.onclose = (event: { code?: number; reason?: string }) => {
      if (this.ws === ws) this.ended(event.code ?? 1006, event.reason ?? "", false);
    };
    ws.onerror = () => undefined; // a close event follows
  }

  private async onOpen(ws: WebSocketLike): Promise<void> {
    this.opened = true;
    const topics = [...this.listened];
    if (topics.length) {
      let reply: Frame;
      try {
        reply = await this.sendListen(ws, topics, true);
      } catch (err) {
        if (err instanceof TokenError) this.stop(err);
        else if (!(err instanceof LostError)) this.abandon(ws, `no token: ${(err as Error).message}`);
        return;
      }
      const code = typeof reply.error === "string" ? reply.error : "";
      if (code && TRANSIENT_REFUSALS.has(code)) return this.abandon(ws, `LISTEN refused for now: ${code}`);
      if (code) return this.stop(new ListenError(code, String(reply.error_description ?? ""), topics));
    }
    if (this.ws !== ws) return;
    this.ready = true;
    this.attempt = 0;
    this.emit("connected", { url: this.url, reconnected: this.everReady, topics });
    this.everReady = true;
    for (const [resolve] of this.readyWaiters.splice(0)) resolve();
    this.schedulePing(ws);
    for (const job of this.queue.splice(0)) this.run(job);
  }

  /** Drop `ws` (no PONG, a timeout, RECONNECT) and carry on as if the server had closed it. */
  private abandon(ws: WebSocketLike, reason: string, immediate = false): void {
    if (this.ws !== ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null; // onerror stays: `ws` throws an error nobody listens to
    closeQuietly(ws, CLIENT_ABORT, reason);
    this.ended(CLIENT_ABORT, reason, immediate);
  }

  /** A connection ended with `code`: tell, fail what waited for it, and reconnect or stop. */
  private ended(code: number, reason: string, immediate: boolean): void {
    const wasOpen = this.opened;
    this.ws = null;
    this.opened = this.ready = false;
    for (const name of ["connect", "ping", "pong"] as const) this.clearTimer(name);
    for (const [nonce, pending] of this.pending) {
      this.clock.clearTimeout(pending.timer);
      this.pending.delete(nonce);
      pending.reject(new LostError());
    }
    if (this.closed) return;
    const retry = shouldReconnect(code);
    if (wasOpen) this.emit("disconnected", { code, reason, willRetry: retry });
    if (!retry) return this.stop(new DisconnectedError(code, reason || CLOSE_CODES[code]?.reason || ""));
    const delay = immediate
      ? (this.random() * this.opts.backoffInitialMs) / 2
      : backoffDelay(this.attempt++, this.opts.backoffInitialMs, this.opts.backoffMaxMs, this.random);
    const why = reason || (wasOpen ? `the connection closed (${code})` : `could not connect (${code})`);
    this.emit("reconnecting", { delay, reason: why, attempt: this.attempt });
    this.setTimer("reconnect", delay, () => {
      this.reconnects += 1;
      this.urlIndex = this.reconnects % this.urls.length;
      this.open();
    });
  }

  /** Stop for good: close, reject everything waiting, and (unless `close()`d) emit `error`. */
  private stop(error: Error, report = true): void {
    if (this.closed) return;
    this.closed = true;
    this.failure = error;
    const ws = this.ws;
    const wasOpen = this.opened;
    if (ws !== null) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      closeQuietly(ws, 1000, "");
    }
    this.ended(1000, "", false);
    for (const name of ["reconnect", "refresh"] as const) this.clearTimer(name);
    for (const job of this.queue.splice(0)) job.reject(error);
    for (const [, reject] of this.readyWaiters.splice(0)) reject(error);
    if (wasOpen && !(error instanceof DisconnectedError)) {
      this.emit("disconnected", { code: 1000, reason: "", willRetry: false });
    }
    if (report) this.emit("error", { error });
  }

  // -- frames ----------------------------------------------------------------------

  private onFrame(ws: WebSocketLike, text: string): void {
    let frame: Frame;
    try {
      frame = JSON.parse(text) as Frame;
    } catch {
      return; // not what the protocol says: ignored
    }
    if (frame === null || typeof frame !== "object") return;
    const data = frame.data !== null && typeof frame.data === "object" ? frame.data : {};
    switch (frame.type) {
      case "RESPONSE":
        return this.onResponse(frame);
      case "MESSAGE":
        return this.onMessage(data);
      case "PONG":
        this.clearTimer("pong");
        return this.schedulePing(ws);
      case "GAP": {
        const topics = strings(data.topics);
        this.track.gap(topics);
        return this.emit("gap", { topics, reason: typeof data.reason === "string" ? data.reason : undefined });
      }
      case "JOIN":
      case "LEAVE": {
        const event = presenceEvent(frame.data);
        if (event !== undefined) this.emit(frame.type === "JOIN" ? "join" : "leave", event);
        return;
      }
      case "AUTH_REVOKED": {
        const topics = strings(data.topics);
        for (const topic of topics) this.listened.delete(topic);
        this.track.forget(topics);
        this.dropToken(); // expired or revoked: the next LISTEN fetches a new one
        return this.emit("authRevoked", { topics });
      }
      case "RECONNECT":
        return this.abandon(ws, "the server asked to reconnect (RECONNECT)", true);
    }
  }

  private onResponse(frame: Frame): void {
    const nonce = String(frame.nonce ?? "");
    const pending = this.pending.get(nonce);
    if (pending === undefined) return;
    this.pending.delete(nonce);
    this.clock.clearTimeout(pending.timer);
    pending.resolve(frame);
  }

  private onMessage(data: NonNullable<Frame["data"]>): void {
    const { topic, message, offset, epoch } = data;
    if (typeof topic !== "string" || typeof message !== "string") return;
    if (!Number.isInteger(offset) || typeof epoch !== "string") {
      this.track.forget([topic]); // a topic without history: a position for it is useless
      return this.emit("message", { topic, message });
    }
    const position = { offset: offset as number, epoch };
    // one in flight after its UNLISTEN is delivered but leaves no position behind
    if (!this.track.accept(topic, position, this.listened.has(topic))) return;
    this.emit("message", { topic, message, ...position });
  }

  // -- requests --------------------------------------------------------------------

  /** Send a caller's request now if connected, else when the next connection is ready. */
  private run(job: Job): void {
    if (this.closed) return job.reject(this.failure);
    if (!this.ready || this.ws === null) {
      this.queue.push(job);
      return this.start();
    }
    void this.perform(this.ws, job);
  }

  private async perform(ws: WebSocketLike, job: Job): Promise<void> {
    let reply: Frame;
    try {
      if (job.kind === "PRESENCE") reply = await this.requestWithToken(ws, "PRESENCE", { topic: job.topic });
      else if (job.kind === "LISTEN") reply = await this.sendListen(ws, job.topics, true);
      else reply = await this.request(ws, "UNLISTEN", { topics: job.topics });
    } catch (err) {
      if (!(err instanceof LostError)) return job.reject(err as Error);
      if (job.kind === "UNLISTEN") return job.resolve();
      // sent again on the next connection; `ws` closing (its close event not yet fired): wait for it
      return this.ws === ws ? void this.queue.push(job) : this.run(job);
    }
    const code = typeof reply.error === "string" ? reply.error : "";
    if (job.kind === "PRESENCE") return this.answered(job, code, reply);
    if (code) {
      if (job.kind === "LISTEN") this.track.forget(job.topics.filter((t) => !this.listened.has(t)));
      return job.reject(new ListenError(code, String(reply.error_description ?? ""), job.topics));
    }
    if (job.kind === "LISTEN") for (const topic of job.topics) this.listened.add(topic);
    job.resolve();
  }

  /** Settle a PRESENCE job by its RESPONSE (`code`: its error, "" for none). */
  private answered(job: Extract<Job, { kind: "PRESENCE" }>, code: string, reply: Frame): void {
    const data = code ? undefined : presenceData(reply.data);
    if (data !== undefined) return job.resolve(data);
    const description = code ? String(reply.error_description ?? "") : "the answer has no counts";
    job.reject(new PresenceError(code || "ERR_SERVER", description, job.topic));
  }

  /** LISTEN with `clientInfo` and a token (see `requestWithToken`); the RESPONSE. */
  private sendListen(ws: WebSocketLike, topics: string[], withSince: boolean): Promise<Frame> {
    const data: Record<string, unknown> = { topics };
    const since = withSince ? this.track.since(topics) : undefined;
    if (since !== undefined) data["since"] = since;
    if (this.clientInfo !== undefined) data["client_info"] = this.clientInfo;
    return this.requestWithToken(ws, "LISTEN", data);
  }

  /** `type` with the current token, once more with a fresh one after ERR_BADAUTH; the RESPONSE. */
  private async requestWithToken(ws: WebSocketLike, type: string, data: Record<string, unknown>): Promise<Frame> {
    let token = await this.currentToken();
    if (token !== null) data["auth_token"] = token;
    let reply = await this.request(ws, type, data);
    if (reply.error === "ERR_BADAUTH" && token !== null) {
      this.dropToken(); // maybe expired or revoked: once more with a fresh one
      token = await this.currentToken();
      if (token !== null) data["auth_token"] = token;
      reply = await this.request(ws, type, data);
    }
    return reply;
  }

  private request(ws: WebSocketLike, type: string, data: Record<string, unknown>): Promise<Frame> {
    if (this.ws !== ws || ws.readyState !== OPEN) return Promise.reject(new LostError());
    const nonce = `c${++this.nonce}`;
    return new Promise<Frame>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.pending.delete(nonce);
        reject(new LostError());
        this.abandon(ws, `no RESPONSE to ${type} in time`);
      }, this.opts.responseTimeoutMs);
      this.pending.set(nonce, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ type, nonce, data }));
      } catch {
        this.clock.clearTimeout(timer);
        this.pending.delete(nonce);
        reject(new LostError()); // closing: the close event follows
      }
    });
  }

  // -- keepalive -------------------------------------------------------------------

  private schedulePing(ws: WebSocketLike): void {
    const { pingIntervalMs, pingJitterMs, pongTimeoutMs } = this.opts;
    this.setTimer("ping", pingIntervalMs + this.random() * pingJitterMs, () => {
      if (this.ws !== ws) return;
      ws.send('{"type":"PING"}');
      this.setTimer("pong", pongTimeoutMs, () => this.abandon(ws, "no PONG"));
    });
  }

  // -- tokens ----------------------------------------------------------------------

  /** The token to send (`null`: none), fetched when there is none or it is due for refresh. */
  private currentToken(): Promise<string | null> {
    if (this.provider === null) return Promise.resolve(null);
    if (this.token !== undefined && this.clock.now() < this.token.refreshAt) return Promise.resolve(this.token.value);
    this.tokenFetch ??= this.fetchToken(this.provider).finally(() => {
      this.tokenFetch = undefined;
    });
    return this.tokenFetch;
  }

  private async fetchToken(provider: TokenProvider): Promise<string | null> {
    const got = await provider();
    const info = typeof got === "string" ? { token: got } : got;
    if (info === null) {
      this.token = { value: null, refreshAt: Infinity };
      return null;
    }
    const lifetime = tokenLifetime(info.token, info.expiresIn);
    const lifeMs = lifetime === undefined ? Infinity : lifetime * 1000;
    const delay = lifeMs - Math.min(this.opts.refreshMarginMs, lifeMs / 2);
    this.token = { value: info.token, refreshAt: this.clock.now() + delay };
    this.clearTimer("refresh");
    if (Number.isFinite(delay)) this.setTimer("refresh", delay, () => void this.refresh());
    return info.token;
  }

  /** Before the token expires: a new one, and LISTEN again with it (a newer grant replaces the old). */
  private async refresh(): Promise<void> {
    this.token = undefined;
    const ws = this.ws;
    if (!this.ready || ws === null || !this.listened.size) return; // the next connection fetches one
    let reply: Frame;
    try {
      reply = await this.sendListen(ws, [...this.listened], false);
    } catch (err) {
      if (err instanceof TokenError) this.stop(err);
      else if (!(err instanceof LostError)) this.abandon(ws, `token refresh failed: ${(err as Error).message}`);
      return;
    }
    if (reply.error) this.abandon(ws, `token refresh refused: ${String(reply.error)}`);
  }

  private dropToken(): void {
    this.token = undefined;
    this.clearTimer("refresh");
  }

  private setTimer(name: TimerName, ms: number, fn: () => void): void {
    this.clearTimer(name);
    this.timers[name] = this.clock.setTimeout(() => {
      this.timers[name] = undefined;
      fn();
    }, ms);
  }

  private clearTimer(name: TimerName): void {
    if (this.timers[name] !== undefined) this.clock.clearTimeout(this.timers[name]);
    this.timers[name] = undefined;
  }
}
