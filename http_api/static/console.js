// realtime console: live counts, LISTEN to topics, publish. No build step, no dependencies.
"use strict";

const KEY = "realtime.console.apiKey";
const PING_MS = 240000;
const MAX_LOG = 200;
const $ = (id) => document.getElementById(id);

const state = { ws: null, nonce: 0, pending: new Map(), topics: new Set(), statsTimer: null, pingTimer: null };

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

async function api(path, options = {}) {
  const headers = { Authorization: "Api-Key " + apiKey(), ...(options.headers || {}) };
  const resp = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    throw new Error((body && body.message) || resp.status + " " + resp.statusText);
  }
  return body;
}

// -- login --------------------------------------------------------------------------

async function openConsole() {
  const stats = await api("/console/stats");
  $("login-form").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  renderStats(stats);
  state.statsTimer = setInterval(refreshStats, 1000);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  $("api-key").value = "";
  try {
    await openConsole();
    $("login-error").textContent = "";
  } catch (err) {
    sessionStorage.removeItem(KEY);
    $("login-error").textContent = err.message;
  }
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.reload();
});

// -- live counts ----------------------------------------------------------------------

async function refreshStats() {
  try {
    renderStats(await api("/console/stats"));
    $("stats-error").textContent = "";
  } catch (err) {
    $("stats-error").textContent = "stats: " + err.message;
  }
}

function renderStats(s) {
  $("stat-connections").textContent = s.connections;
  $("stat-topics").textContent = s.topics;
  $("stat-delivered-rate").textContent = s.delivered_per_second.toFixed(1);
  $("stat-published-rate").textContent = s.published_per_second.toFixed(1);
  $("stat-broker").textContent = s.broker.kind + (s.broker.ready ? " \u2713" : " \u2717");
  $("stat-broker").className = "value" + (s.broker.ready ? " ok" : " error");
  const names = $("topic-names");
  if (!names.childElementCount) {
    for (const name of s.topic_names) {
      const option = document.createElement("option");
      option.value = name;
      names.append(option);
    }
  }
  const rows = Object.entries(s.listens).map(([name, count]) => {
    const tr = document.createElement("tr");
    for (const text of [name, String(count)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  $("listens").replaceChildren(...rows);
}

// -- WebSocket ------------------------------------------------------------------------

function connect() {
  if (state.ws && state.ws.readyState <= WebSocket.OPEN) {
    return state.ws.readyState === WebSocket.OPEN ? Promise.resolve(state.ws) : waitOpen(state.ws);
  }
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/ws");
  state.ws = ws;
  ws.addEventListener("message", (event) => onFrame(JSON.parse(event.data)));
  ws.addEventListener("close", (event) => {
    clearInterval(state.pingTimer);
    for (const [, reject] of state.pending.values()) reject(new Error("connection closed"));
    state.pending.clear();
    setStatus("disconnected (" + event.code + ")" + (state.topics.size ? ", reconnecting\u2026" : ""));
    if (state.topics.size && state.ws === ws) setTimeout(relisten, 1000 + Math.random() * 1000);
  });
  state.pingTimer = setInterval(() => ws.readyState === WebSocket.OPEN && ws.send('{"type":"PING"}'), PING_MS);
  return waitOpen(ws);
}

function waitOpen(ws) {
  return new Promise((resolve, reject) => {
    ws.addEventListener("open", () => resolve(ws), { once: true });
    ws.addEventListener("error", () => reject(new Error("WebSocket failed")), { once: true });
  });
}

function request(ws, type, data) {
  const nonce = "c" + ++state.nonce;
  return new Promise((resolve, reject) => {
    state.pending.set(nonce, [resolve, reject]);
    ws.send(JSON.stringify({ type, nonce, data }));
  });
}

async function listen(topics) {
  const { token } = await api("/auth/ws", { method: "POST" });
  const ws = await connect();
  const reply = await request(ws, "LISTEN", { topics, auth_token: token });
  if (reply.error) throw new Error(reply.error + ": " + (reply.error_description || ""));
  for (const topic of topics) state.topics.add(topic);
  renderTopics();
  setStatus("listening", true);
}

async function relisten() {
  try {
    await listen([...state.topics]);
    addLog("notice", "", "reconnected: publications in between were missed");
  } catch (err) {
    setStatus("reconnect failed: " + err.message);
    setTimeout(relisten, 5000);
  }
}

function onFrame(frame) {
  if (frame.type === "RESPONSE") {
    const pending = state.pending.get(frame.nonce);
    state.pending.delete(frame.nonce);
    if (pending) pending[0](frame);
  } else if (frame.type === "MESSAGE") {
    addLog("message", frame.data.topic, frame.data.message);
  } else if (frame.type === "GAP") {
    addLog("notice", frame.data.topics.join(" "), "GAP: messages may have been missed");
  } else if (frame.type === "AUTH_REVOKED") {
    for (const topic of frame.data.topics) state.topics.delete(topic);
    renderTopics();
    addLog("notice", frame.data.topics.join(" "), "AUTH_REVOKED: listen again");
  } else if (frame.type === "RECONNECT") {
    addLog("notice", "", "server restarting: reconnecting");
  }
}

function setStatus(text, ok = false) {
  $("listen-status").textContent = text;
  $("listen-status").className = ok ? "ok" : "muted";
}

function renderTopics() {
  $("listening").replaceChildren(...[...state.topics].map((topic) => {
    const li = document.createElement("li");
    li.textContent = topic;
    return li;
  }));
}

function addLog(kind, topic, message) {
  const li = document.createElement("li");
  li.className = kind;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date().toLocaleTimeString();
  const where = document.createElement("span");
  where.className = "topic";
  where.textContent = topic;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message;
  li.append(time, where, text);
  $("messages").prepend(li);
  while ($("messages").childElementCount > MAX_LOG) $("messages").lastElementChild.remove();
}

$("listen-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const topic = $("listen-topic").value.trim();
  setStatus("listening to " + topic + "\u2026");
  try {
    await listen([topic]);
    $("listen-topic").value = "";
  } catch (err) {
    setStatus(err.message);
  }
});

// -- publish --------------------------------------------------------------------------

$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const topic = $("publish-topic").value.trim();
  let message = $("publish-message").value;
  try {
    if ($("publish-json").checked) message = JSON.parse(message);
    await api("/publish", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ topic, message }),
    });
    $("publish-status").textContent = "published to " + topic;
    $("publish-status").className = "ok";
  } catch (err) {
    $("publish-status").textContent = err.message;
    $("publish-status").className = "error";
  }
});

if (apiKey()) openConsole().catch(() => sessionStorage.removeItem(KEY));
