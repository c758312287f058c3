// The client against an in-memory WebSocket and a fake clock: token refresh timing,
// keepalive, backoff, close-code decisions, RECONNECT and history recovery.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DisconnectedError, ListenError, RealtimeClient, TokenError } from "../dist/index.js";
import { FakeClock, fakeClient, fakeWebSocket, flush, jwt, openAndAccept, record } from "./helpers.mjs";

function setup(options = {}) {
  const made = fakeClient(options);
  return { ...made, events: record(made.client) };
}

test("listen settles by its RESPONSE's nonce; refused: a typed ListenError", async () => {
  const { WS, client } = setup();
  const ok = client.listen(["dream:update.a"]);
  assert.equal(WS.instances.length, 1);
  assert.equal(WS.instances[0].url, "ws://rt.test/ws");
  const ws = await openAndAccept(WS, 0);
  const bad = client.listen(["remote-control:command.8"]);
  await flush();
  const [first, second] = ws.sent.filter((f) => f.type === "LISTEN");
  assert.notEqual(first.nonce, second.nonce);
  ws.receive({ type: "RESPONSE", nonce: second.nonce, error: "ERR_BADTOPIC", error_description: "no" });
  ws.receive({ type: "RESPONSE", nonce: first.nonce, error: "" });
  await ok;
  const err = await bad.then(() => null, (e) => e);
  assert.ok(err instanceof ListenError);
  assert.equal(err.code, "ERR_BADTOPIC");
  assert.deepEqual(client.topics, ["dream:update.a"]);
  assert.equal(first.data.auth_token.split(".").length, 3);
  client.close();
});

test("the token is refreshed at its own lifetime minus the margin, and LISTENed again", async () => {
  const { clock, WS, tokens, client } = setup({ refreshMarginMs: 30_000 });
  const listening = client.listen(["remote-control:command.7"]);
  const ws = WS.instances[0];
  ws.open();
  await flush();
  ws.answer("LISTEN");
  await listening;
  assert.equal(tokens.length, 1);
  await clock.advance(69_999); // lifetime 100 s (exp - iat), margin 30 s
  assert.equal(tokens.length, 1);
  assert.equal(ws.sent.filter((f) => f.type === "LISTEN").length, 1);
  await clock.advance(1);
  assert.equal(tokens.length, 2);
  const refresh = ws.last("LISTEN");
  assert.equal(refresh.data.auth_token, tokens[1]);
  assert.deepEqual(refresh.data.topics, ["remote-control:command.7"]);
  ws.answer("LISTEN");
  await clock.advance(70_000);
  assert.equal(tokens.length, 3);
  client.close();
});

test("a short token refreshes at half its lifetime; expires_in wins when shorter", async () => {
  const clock = new FakeClock();
  const WS = fakeWebSocket();
  let calls = 0;
  const client = new RealtimeClient({
    url: "http://rt.test",
    WebSocket: WS,
    clock,
    tokenProvider: async () => {
      calls += 1;
      return { token: jwt({ iat: 0, exp: 3600 }), expiresIn: 4 };
    },
  });
  const listening = client.listen(["a:b.c"]);
  WS.instances[0].open();
  await flush();
  WS.instances[0].answer("LISTEN");
  await listening;
  await clock.advance(1_999);
  assert.equal(calls, 1);
  await clock.advance(1);
  assert.equal(calls, 2);
  client.close();
});

test("PING under the interval; no PONG in time closes and reconnects with backoff", async () => {
  const { clock, WS, client, events } = setup({ pingIntervalMs: 1000, pingJitterMs: 200, pongTimeoutMs: 300 });
  client.listen(["dream:update.a"]).catch(() => undefined);
  const ws = await openAndAccept(WS, 0);
  await clock.advance(1099); // 1000 + 0.5 * 200
  assert.equal(ws.last("PING"), undefined);
  await clock.advance(1);
  assert.ok(ws.last("PING"));
  ws.receive({ type: "PONG" });
  await clock.advance(1100);
  assert.equal(ws.sent.filter((f) => f.type === "PING").length, 2);
  await clock.advance(300); // no PONG
  assert.equal(ws.closedWith.code, 4000);
  assert.deepEqual(events.disconnected, [{ code: 4000, reason: "no PONG", willRetry: true }]);
  assert.equal(events.reconnecting[0].delay, 500); // full jitter: 0.5 * 1000
  await clock.advance(500);
  assert.equal(WS.instances.length, 2);
  client.close();
});

test("backoff windows double per failed attempt and reset once connected", async () => {
  const { clock, WS, client, events } = setup({ backoffInitialMs: 100, backoffMaxMs: 1000 });
  client.listen(["dream:update.a"]);
  for (let i = 0; i < 6; i += 1) {
    WS.instances[i].serverClose(1006);
    await clock.advance(events.reconnecting[i].delay);
  }
  assert.deepEqual(
    events.reconnecting.map((e) => e.delay),
    [50, 100, 200, 400, 500, 500],
  );
  await openAndAccept(WS, 6);
  WS.instances[6].serverClose(1011);
  assert.equal(events.reconnecting.at(-1).delay, 50);
  assert.equal(events.connected.length, 1);
  client.close();
});

test("a close code that says do not reconnect stops the client", async () => {
  const { clock, WS, client, events } = setup();
  const pending = client.listen(["dream:update.a"]);
  await openAndAccept(WS, 0);
  await pending;
  WS.instances[0].serverClose(1009, "message too big");
  await clock.advance(1_000_000);
  assert.equal(WS.instances.length, 1);
  assert.deepEqual(events.disconnected, [{ code: 1009, reason: "message too big", willRetry: false }]);
  assert.ok(events.error[0].error instanceof DisconnectedError);
  assert.equal(events.error[0].error.closeCode, 1009);
  await assert.rejects(client.listen(["x:y.z"]), DisconnectedError);
});

test("RECONNECT: at once to the next URL, re-LISTEN with since; duplicates dropped", async () => {
  const { clock, WS, client, events } = setup({ urls: ["http://a.test", "http://b.test/"], tokenProvider: null });
  client.listen(["dream:update.x", "dream:update.plain"]);
  const a = await openAndAccept(WS, 0);
  assert.equal(a.last("LISTEN").data.auth_token, undefined);
  const msg = (offset, message) => ({
    type: "MESSAGE",
    data: { topic: "dream:update.x", message, offset, epoch: "e1" },
  });
  a.receive(msg(1, "one"));
  a.receive(msg(2, "two"));
  a.receive({ type: "MESSAGE", data: { topic: "dream:update.plain", message: "live" } });
  a.receive({ type: "RECONNECT" });
  assert.equal(a.closedWith.code, 4000);
  assert.ok(events.reconnecting[0].delay <= 500);
  await clock.advance(events.reconnecting[0].delay);
  const b = WS.instances[1];
  assert.equal(b.url, "ws://b.test/ws");
  b.open();
  await flush();
  const relisten = b.last("LISTEN");
  assert.deepEqual(relisten.data.since, { "dream:update.x": { offset: 2, epoch: "e1" } });
  b.answer("LISTEN");
  await flush();
  b.receive(msg(2, "two")); // overlap: dropped
  b.receive(msg(3, "three"));
  assert.deepEqual(
    events.message.map((m) => m.message),
    ["one", "two", "live", "three"],
  );
  assert.equal(client.duplicatesDropped, 1);
  assert.deepEqual(events.connected.map((c) => c.reconnected), [false, true]);
  assert.deepEqual(client.positions, { "dream:update.x": { offset: 3, epoch: "e1" } });
  b.receive({ type: "GAP", data: { topics: ["dream:update.x"], reason: "history_lost" } });
  b.receive(msg(1, "after the gap")); // replaces the position whatever its offset
  assert.equal(events.message.at(-1).message, "after the gap");
  assert.deepEqual(events.gap, [{ topics: ["dream:update.x"], reason: "history_lost" }]);
  client.close();
});

test("AUTH_REVOKED drops the topics and the token; the next LISTEN fetches a new one", async () => {
  const { WS, tokens, client, events } = setup();
  client.listen(["remote-control:command.7", "dream:update.a"]);
  const ws = await openAndAccept(WS, 0);
  ws.receive({ type: "AUTH_REVOKED", data: { topics: ["remote-control:command.7"] } });
  assert.deepEqual(events.authRevoked, [{ topics: ["remote-control:command.7"] }]);
  assert.deepEqual(client.topics, ["dream:update.a"]);
  const again = client.listen(["remote-control:command.7"]);
  await flush();
  assert.equal(tokens.length, 2);
  assert.equal(ws.last("LISTEN").data.auth_token, tokens[1]);
  ws.answer("LISTEN");
  await again;
  client.close();
});

test("ERR_BADAUTH is retried once with a fresh token, then surfaced", async () => {
  const { WS, tokens, client } = setup();
  const listening = client.listen(["remote-control:command.8"]);
  const ws = WS.instances[0];
  ws.open(); // the first LISTEN is the connection's own (no topics yet): the caller's follows
  await flush();
  ws.answer("LISTEN", "ERR_BADAUTH");
  await flush();
  assert.equal(tokens.length, 2);
  ws.answer("LISTEN", "ERR_BADAUTH");
  const err = await listening.then(() => null, (e) => e);
  assert.equal(err.code, "ERR_BADAUTH");
  assert.deepEqual(client.topics, []);
  client.close();
});

test("a request cut by a dropped connection is sent again on the next one", async () => {
  const { clock, WS, client, events } = setup();
  const listening = client.listen(["dream:update.a"]);
  WS.instances[0].open();
  await flush();
  WS.instances[0].serverClose(1006);
  await clock.advance(events.reconnecting[0].delay);
  await openAndAccept(WS, 1);
  await listening;
  assert.deepEqual(client.topics, ["dream:update.a"]);
  client.close();
});

test("a refused token: a listen() call rejects; on (re)connect the client stops", async () => {
  const WS = fakeWebSocket();
  const refuse = async () => {
    throw new TokenError("/auth/ws answered 401", 401);
  };
  const client = new RealtimeClient({ url: "http://rt.test", WebSocket: WS, clock: new FakeClock(), tokenProvider: refuse });
  const events = record(client);
  const listening = client.listen(["remote-control:command.7"]);
  WS.instances[0].open();
  await assert.rejects(listening, TokenError);
  assert.equal(events.error.length, 0); // the caller got it
  client.close();

  const WS2 = fakeWebSocket();
  const other = new RealtimeClient({
    url: "http://rt.test",
    topics: ["remote-control:command.7"],
    WebSocket: WS2,
    clock: new FakeClock(),
    tokenProvider: refuse,
  });
  const otherEvents = record(other);
  const connecting = other.connect();
  WS2.instances[0].open();
  await assert.rejects(connecting, TokenError);
  assert.ok(otherEvents.error[0].error instanceof TokenError);
  assert.deepEqual(otherEvents.disconnected, [{ code: 1000, reason: "", willRetry: false }]);
});

test("a default token provider posts to /auth/ws with the page's credentials", async () => {
  const WS = fakeWebSocket();
  const seen = [];
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (url, init) => {
    seen.push([url, init.method, init.credentials]);
    return new Response(JSON.stringify({ token: jwt({ iat: 0, exp: 60 }), expires_in: 60 }), { status: 200 });
  };
  try {
    const client = new RealtimeClient({ url: "https://rt.test/", WebSocket: WS, clock: new FakeClock() });
    client.listen(["remote-control:command.7"]).catch(() => undefined);
    assert.equal(WS.instances[0].url, "wss://rt.test/ws");
    WS.instances[0].open();
    await flush();
    assert.deepEqual(seen, [["https://rt.test/auth/ws", "POST", "include"]]);
    client.close();
  } finally {
    globalThis.fetch = realFetch;
  }
});

test("unlisten before a queued LISTEN is sent takes its topics out of it", async () => {
  const { WS, client } = setup({ tokenProvider: null });
  const both = client.listen(["dream:update.a", "dream:update.b"]);
  const onlyA = client.listen(["dream:update.a"]);
  await client.unlisten(["dream:update.a"]);
  await onlyA; // nothing left to send
  const ws = WS.instances[0];
  ws.open();
  await flush();
  assert.deepEqual(ws.sent.map((f) => f.data.topics), [["dream:update.b"]]);
  ws.answer("LISTEN");
  await both;
  assert.deepEqual(client.topics, ["dream:update.b"]);
  client.close();
});
