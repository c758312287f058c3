// The client over real WebSockets (the `ws` package on Node 20) against scripted servers.
import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket from "ws";
import { DisconnectedError, ListenError, RealtimeClient } from "../dist/index.js";
import { defaultOnFrame, record, scriptedServer, until } from "./helpers.mjs";

const fast = { WebSocket, tokenProvider: null, backoffInitialMs: 20, backoffMaxMs: 100, responseTimeoutMs: 2000 };

test("listen, receive, RECONNECT to the next instance, recover with since, drop duplicates", async (t) => {
  const a = await scriptedServer();
  const b = await scriptedServer((socket, frame) => {
    defaultOnFrame(socket, frame);
    if (frame.type === "LISTEN" && frame.data.since) {
      const { offset, epoch } = frame.data.since["dream:update.x"];
      for (const o of [offset - 1, offset, offset + 1, offset + 2]) {
        socket.send(JSON.stringify({ type: "MESSAGE", data: { topic: "dream:update.x", message: `m${o}`, offset: o, epoch } }));
      }
    }
  });
  t.after(() => Promise.all([a.close(), b.close()]));
  const client = new RealtimeClient({ ...fast, urls: [a.url, b.url] });
  const events = record(client);
  await client.listen(["dream:update.x"]);
  const [socket] = a.connections;
  for (const o of [1, 2]) {
    socket.send(JSON.stringify({ type: "MESSAGE", data: { topic: "dream:update.x", message: `m${o}`, offset: o, epoch: "E" } }));
  }
  await until(() => events.message.length === 2);
  socket.send('{"type":"RECONNECT"}');
  const relisten = await b.next((f) => f.type === "LISTEN");
  assert.deepEqual(relisten.data, { topics: ["dream:update.x"], since: { "dream:update.x": { offset: 2, epoch: "E" } } });
  await until(() => events.message.length === 4);
  assert.deepEqual(events.message.map((m) => m.message), ["m1", "m2", "m3", "m4"]);
  assert.equal(client.duplicatesDropped, 2);
  assert.equal(client.url, b.url);
  assert.equal(client.reconnects, 1);
  client.close();
});

test("a refused LISTEN rejects with its code; the connection stays", async (t) => {
  const server = await scriptedServer((socket, frame) => {
    const bad = frame.data?.topics?.includes("nope");
    socket.send(JSON.stringify({ type: "RESPONSE", nonce: frame.nonce, error: bad ? "ERR_BADTOPIC" : "" }));
  });
  t.after(() => server.close());
  const client = new RealtimeClient({ ...fast, url: server.url });
  await client.listen(["dream:update.a"]);
  await assert.rejects(client.listen(["nope"]), (e) => e instanceof ListenError && e.code === "ERR_BADTOPIC");
  await client.listen(["dream:update.b"]);
  assert.equal(server.connections.length, 1);
  assert.deepEqual(client.topics, ["dream:update.a", "dream:update.b"]);
  await client.unlisten(["dream:update.a"]);
  assert.deepEqual((await server.next((f) => f.type === "UNLISTEN")).data, { topics: ["dream:update.a"] });
  client.close();
});

test("close codes: 4008 reconnects, 1002 stops", async (t) => {
  const server = await scriptedServer();
  t.after(() => server.close());
  const client = new RealtimeClient({ ...fast, url: server.url });
  const events = record(client);
  await client.listen(["dream:update.a"]);
  server.connections[0].close(4008, "slow consumer");
  await until(() => events.connected.length === 2);
  assert.deepEqual(events.disconnected[0], { code: 4008, reason: "slow consumer", willRetry: true });
  server.connections[1].close(1002, "protocol error");
  await until(() => events.error.length === 1);
  assert.ok(events.error[0].error instanceof DisconnectedError);
  assert.deepEqual(events.disconnected[1], { code: 1002, reason: "protocol error", willRetry: false });
  assert.equal(server.connections.length, 2);
});

test("a server that stops answering PING is left for a new connection", async (t) => {
  let mute = true;
  const server = await scriptedServer((socket, frame) => {
    if (frame.type !== "PING" || !mute) defaultOnFrame(socket, frame);
  });
  t.after(() => server.close());
  const client = new RealtimeClient({ ...fast, url: server.url, pingIntervalMs: 50, pingJitterMs: 0, pongTimeoutMs: 100 });
  const events = record(client);
  await client.listen(["dream:update.a"]);
  await until(() => events.reconnecting.length === 1);
  assert.equal(events.reconnecting[0].reason, "no PONG");
  mute = false;
  await until(() => events.connected.length === 2);
  client.close();
});

test("a server that is down is retried with backoff until it is up", async (t) => {
  const server = await scriptedServer();
  const url = server.url;
  await server.close();
  const client = new RealtimeClient({ ...fast, url });
  const events = record(client);
  const listening = client.listen(["dream:update.a"]);
  await until(() => events.reconnecting.length >= 2);
  assert.ok(events.reconnecting.every((e) => e.delay >= 0 && e.delay < 100));
  const { WebSocketServer } = await import("ws");
  const port = Number(new URL(url).port);
  const again = new WebSocketServer({ host: "127.0.0.1", port });
  again.on("connection", (s) => s.on("message", (d) => defaultOnFrame(s, JSON.parse(String(d)))));
  t.after(() => {
    for (const c of again.clients) c.terminate();
    return new Promise((resolve) => again.close(resolve));
  });
  await listening;
  assert.deepEqual(client.topics, ["dream:update.a"]);
  client.close();
});
