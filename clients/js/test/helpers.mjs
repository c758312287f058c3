// Test helpers: a fake clock, an in-memory WebSocket, JWTs, and a scripted `ws` server.
import { WebSocketServer } from "ws";
import { RealtimeClient } from "../dist/index.js";

/** Let pending promise callbacks and I/O callbacks run. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** Timers that run only when the test advances time. */
export class FakeClock {
  t = 0;
  timers = new Map();
  id = 0;
  now = () => this.t;
  setTimeout = (fn, ms) => {
    this.id += 1;
    this.timers.set(this.id, { at: this.t + ms, fn });
    return this.id;
  };
  clearTimeout = (id) => {
    this.timers.delete(id);
  };

  /** Advance by `ms`, running each timer due on the way, in order. */
  async advance(ms) {
    const end = this.t + ms;
    await flush();
    for (;;) {
      const due = [...this.timers].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

/** A WebSocket class whose sockets the test drives: `open()`, `receive(frame)`, `serverClose(code)`. */
export function fakeWebSocket() {
  class FakeSocket {
    static instances = [];
    readyState = 0;
    sent = [];
    closedWith = null;
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    constructor(url) {
      this.url = url;
      FakeSocket.instances.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.readyState = 3;
      this.closedWith = { code, reason };
    }
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    /** The last request of `type` sent. */
    last(type) {
      return this.sent.filter((f) => f.type === type).at(-1);
    }
    /** Answer the last request of `type` with `error` ("" for success). */
    answer(type, error = "") {
      this.receive({ type: "RESPONSE", nonce: this.last(type).nonce, error });
    }
  }
  return FakeSocket;
}

/** An unsigned JWT with these claims (the client never verifies; the server does). */
export function jwt(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "ES256", typ: "JWT" })}.${part(claims)}.c2ln`;
}

/**
 * A real WebSocket server on a loopback port whose `onFrame(socket, frame)` the test scripts.
 * `connections` holds every server-side socket, `frames` every frame received.
 */
export async function scriptedServer(onFrame = defaultOnFrame) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((resolve) => wss.once("listening", resolve));
  const server = {
    wss,
    connections: [],
    frames: [],
    url: `http://127.0.0.1:${wss.address().port}`,
    onFrame,
    waiters: [],
    close: () => {
      for (const c of wss.clients) c.terminate();
      return new Promise((resolve) => wss.close(resolve));
    },
    /** Resolves when a frame matching `pred` has arrived. */
    next(pred) {
      const found = server.frames.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve) => server.waiters.push({ pred, resolve }));
    },
  };
  wss.on("connection", (socket) => {
    server.connections.push(socket);
    socket.on("message", (data) => {
      const frame = JSON.parse(String(data));
      frame.connection = server.connections.indexOf(socket);
      server.frames.push(frame);
      server.onFrame(socket, frame);
      for (const w of server.waiters.splice(0)) {
        if (w.pred(frame)) w.resolve(frame);
        else server.waiters.push(w);
      }
    });
  });
  return server;
}

/** A client on a fake clock and an in-memory WebSocket, tokens for sub 7 (100 s each,
 * kept in `tokens`); `options` override the client's. */
export function fakeClient(options = {}) {
  const clock = new FakeClock();
  const WS = fakeWebSocket();
  const tokens = [];
  const client = new RealtimeClient({
    url: "http://rt.test",
    WebSocket: WS,
    clock,
    random: () => 0.5,
    tokenProvider: async () => {
      const token = jwt({ sub: "7", iat: 1_000_000 + tokens.length, exp: 1_000_100 + tokens.length }); // 100 s
      tokens.push(token);
      return token;
    },
    ...options,
  });
  return { clock, WS, tokens, client };
}

/** Open fake socket `i` and accept its (re-)LISTEN, if it sends one. */
export async function openAndAccept(WS, i) {
  const ws = WS.instances[i];
  ws.open();
  await flush();
  if (ws.last("LISTEN")) ws.answer("LISTEN");
  await flush();
  return ws;
}

/** Answers PING with PONG and every request with success. */
export function defaultOnFrame(socket, frame) {
  if (frame.type === "PING") socket.send('{"type":"PONG"}');
  else socket.send(JSON.stringify({ type: "RESPONSE", nonce: frame.nonce, error: "" }));
}

/** Collects a client's events: `events.message`, `events.gap`, ... as arrays. */
export function record(client) {
  const events = {};
  for (const name of ["message", "gap", "authRevoked", "reconnecting", "connected", "disconnected", "error"]) {
    events[name] = [];
    client.on(name, (e) => events[name].push(e));
  }
  return events;
}

/** Resolves when `pred()` holds, polling (fails after `ms`). */
export async function until(pred, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
