// Benchmark peer: Node.js Socket.IO 4 + @socket.io/redis-adapter, rooms as topics.
// Relays the benchmark's Redis channel (envelope {"topic","message"}) to the topic's room,
// the way a backend publishing through Redis reaches Socket.IO clients.
// Env: PORT, REDIS_URL, CHANNEL (unique per run), PERMESSAGE_DEFLATE=1 (enable
// permessage-deflate, with ws's defaults: messages of 1 KiB and more are compressed).
"use strict";
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const url = process.env.REDIS_URL;
  const channel = process.env.CHANNEL;
  const pub = createClient({ url });
  const sub = pub.duplicate();
  const relay = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect(), relay.connect()]);
  const io = new Server({
    adapter: createAdapter(pub, sub, { key: channel + "-sio" }),
    transports: ["websocket"],
    perMessageDeflate: process.env.PERMESSAGE_DEFLATE === "1", // false is the default in Socket.IO 4
  });
  io.on("connection", (socket) => {
    socket.on("listen", (topics, ack) => {
      socket.join(topics);
      if (typeof ack === "function") ack(true);
    });
  });
  await relay.subscribe(channel, (raw) => {
    const env = JSON.parse(raw);
    io.to(env.topic).emit("message", { topic: env.topic, message: env.message });
  });
  io.listen(Number(process.env.PORT));
  const stop = () => { io.close(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => { console.error(err); process.exit(1); });
