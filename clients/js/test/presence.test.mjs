// Presence: clientInfo on every LISTEN, presence(topic), join/leave events (in-memory
// WebSocket, fake clock), and checkClientInfo.
import assert from "node:assert/strict";
import { test } from "node:test";
import { PresenceError, RealtimeClient, checkClientInfo } from "../dist/index.js";
import { fakeClient, fakeWebSocket, flush, jwt, openAndAccept } from "./helpers.mjs";

const ROOM = "chat:room:message.lobby";

function setup(options = {}) {
  const made = fakeClient({ backoffInitialMs: 100, ...options });
  const events = { join: [], leave: [] };
  for (const name of Object.keys(events)) made.client.on(name, (e) => events[name].push(e));
  return { ...made, events };
}

test("clientInfo goes with every LISTEN: the first, listen(), a token refresh, after a reconnect", async () => {
  const { clock, WS, tokens, client } = setup({ topics: [ROOM], clientInfo: { device: "tv" } });
  const connecting = client.connect();
  const ws = await openAndAccept(WS, 0);
  await connecting;
  const adding = client.listen(["remote-control:command.7"]);
  await flush();
  ws.answer("LISTEN");
  await adding;
  await clock.advance(50_000); // the token's lifetime (100 s) minus the margin (60 s, at most half)
  assert.equal(tokens.length, 2);
  ws.answer("LISTEN");
  ws.serverClose(1006);
  await clock.advance(100);
  const again = await openAndAccept(WS, 1);
  const listens = [...ws.sent, ...again.sent].filter((f) => f.type === "LISTEN");
  assert.equal(listens.length, 4);
  for (const frame of listens) assert.deepEqual(frame.data.client_info, { device: "tv" });
  assert.deepEqual(listens[3].data.topics, [ROOM, "remote-control:command.7"]);
  client.close();
});

test("without clientInfo no client_info is sent", async () => {
  const { WS, client } = setup();
  const listening = client.listen([ROOM]);
  await openAndAccept(WS, 0);
  await listening;
  assert.equal("client_info" in WS.instances[0].last("LISTEN").data, false);
  client.close();
});

test("presence(topic): PRESENCE with the token, settled by its RESPONSE's data", async () => {
  const { WS, tokens, client } = setup();
  const asking = client.presence(ROOM); // connects first: no topics, so no LISTEN
  const ws = await openAndAccept(WS, 0);
  const frame = ws.last("PRESENCE");
  assert.deepEqual(frame.data, { topic: ROOM, auth_token: tokens[0] });
  const data = {
    connections: 2,
    users: 1,
    clients: [
      { user: "7", client: "a.1", info: { device: "tv" } },
      { user: null, client: "a.2", info: {} },
    ],
  };
  ws.receive({ type: "RESPONSE", nonce: frame.nonce, error: "", data });
  assert.deepEqual(await asking, data);
  const big = client.presence(ROOM);
  await flush();
  ws.receive({ type: "RESPONSE", nonce: ws.last("PRESENCE").nonce, error: "", data: { connections: 500, users: 3 } });
  assert.deepEqual(await big, { connections: 500, users: 3 }); // beyond the server's cap: counts only
  client.close();
});

test("a refused PRESENCE rejects with PresenceError; ERR_BADAUTH is tried once with a fresh token", async () => {
  const { WS, tokens, client } = setup();
  const asking = client.presence("remote-control:command.8");
  const ws = await openAndAccept(WS, 0);
  const refuse = (code) =>
    ws.receive({ type: "RESPONSE", nonce: ws.last("PRESENCE").nonce, error: code, error_description: "not yours" });
  refuse("ERR_BADAUTH");
  await flush();
  assert.equal(ws.sent.filter((f) => f.type === "PRESENCE").length, 2);
  assert.equal(ws.last("PRESENCE").data.auth_token, tokens[1]);
  refuse("ERR_BADAUTH");
  const err = await asking.then(() => null, (e) => e);
  assert.ok(err instanceof PresenceError);
  assert.deepEqual([err.code, err.topic, err.description], ["ERR_BADAUTH", "remote-control:command.8", "not yours"]);
  const bad = client.presence("channel:update.a");
  await flush();
  ws.receive({ type: "RESPONSE", nonce: ws.last("PRESENCE").nonce, error: "ERR_BADTOPIC" });
  assert.equal((await bad.then(() => null, (e) => e)).code, "ERR_BADTOPIC");
  const odd = client.presence(ROOM); // an answer without the counts
  await flush();
  ws.answer("PRESENCE");
  assert.equal((await odd.then(() => null, (e) => e)).code, "ERR_SERVER");
  client.close();
});

test("a PRESENCE cut short by a lost connection is asked again on the next one; close() rejects", async () => {
  const { clock, WS, client } = setup({ topics: [ROOM] });
  const asking = client.presence(ROOM);
  const ws = await openAndAccept(WS, 0);
  assert.ok(ws.last("PRESENCE"));
  ws.serverClose(1006);
  await clock.advance(100);
  const again = await openAndAccept(WS, 1);
  again.receive({ type: "RESPONSE", nonce: again.last("PRESENCE").nonce, error: "", data: { connections: 1, users: 0, clients: [] } });
  assert.deepEqual(await asking, { connections: 1, users: 0, clients: [] });
  const never = client.presence(ROOM);
  client.close();
  assert.equal((await never.then(() => null, (e) => e)).code, "CLOSED");
});

test("a request made while the socket is closing waits for the next connection (no busy loop)", async () => {
  const { clock, WS, client } = setup({ topics: [ROOM] });
  const connecting = client.connect();
  const ws = await openAndAccept(WS, 0);
  await connecting;
  ws.readyState = 2; // CLOSING: the server's close frame came, the close event has not yet
  const asking = client.presence(ROOM);
  const adding = client.listen(["dream:update.a"]);
  await flush();
  assert.equal(ws.last("PRESENCE"), undefined);
  ws.serverClose(1001);
  await clock.advance(100);
  const again = await openAndAccept(WS, 1);
  await flush();
  again.answer("LISTEN");
  again.receive({ type: "RESPONSE", nonce: again.last("PRESENCE").nonce, error: "", data: { connections: 1, users: 0 } });
  await adding;
  assert.equal((await asking).connections, 1);
  assert.deepEqual(client.topics, [ROOM, "dream:update.a"]);
  client.close();
});

test("unlisten() leaves a queued PRESENCE alone", async () => {
  const { WS, client } = setup();
  const asking = client.presence(ROOM);
  await client.unlisten([ROOM]); // not connected yet: settles at once
  const ws = await openAndAccept(WS, 0);
  ws.receive({ type: "RESPONSE", nonce: ws.last("PRESENCE").nonce, error: "", data: { connections: 0, users: 0, clients: [] } });
  assert.equal((await asking).connections, 0);
  client.close();
});

test("JOIN and LEAVE are join and leave events; malformed ones are ignored", async () => {
  const { WS, client, events } = setup({ topics: [ROOM] });
  const connecting = client.connect();
  const ws = await openAndAccept(WS, 0);
  await connecting;
  const entry = { topic: ROOM, user: "7", client: "a.1", info: { device: "tv" } };
  ws.receive({ type: "JOIN", data: entry });
  ws.receive({ type: "JOIN", data: { topic: ROOM, user: null, client: "a.2" } }); // no info: {}
  ws.receive({ type: "LEAVE", data: entry });
  for (const data of [undefined, [], { topic: ROOM }, { client: "a.3" }, { topic: 5, client: "a.3" }]) {
    ws.receive({ type: "JOIN", data });
  }
  assert.deepEqual(events.join, [entry, { topic: ROOM, user: null, client: "a.2", info: {} }]);
  assert.deepEqual(events.leave, [entry]);
  client.close();
});

test("checkClientInfo: a JSON object of at most 512 bytes nested at most 3 deep, as the server checks", () => {
  const ok = { device: "tv", tags: ["a", { b: 1 }], nested: { a: { b: 1 } } };
  assert.equal(checkClientInfo(ok), ok);
  assert.deepEqual(checkClientInfo({ name: "é".repeat(250) }).name.length, 250); // 500 bytes + 11
  assert.throws(() => checkClientInfo({ name: "é".repeat(251) }), RangeError); // 513 bytes
  assert.throws(() => checkClientInfo({ a: { b: { c: {} } } }), /nested deeper than 3/);
  assert.throws(() => checkClientInfo({ a: [[[]]] }), RangeError);
  for (const bad of [null, [1], "tv", 5]) assert.throws(() => checkClientInfo(bad), TypeError);
  assert.throws(() => new RealtimeClient({ url: "http://rt.test", WebSocket: fakeWebSocket(), clientInfo: [] }), TypeError);
});
