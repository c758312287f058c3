// realtime console: live counts, LISTEN to topics, publish. An ES module; its WebSocket client
// (reconnects, history recovery, token refresh, keepalive) is the JavaScript package of
// clients/js, which the server serves built into one file.
import { RealtimeClient } from "/static/realtime-client.js";

const KEY = "realtime.console.apiKey";
const MAX_LOG = 200;
const $ = (id) => document.getElementById(id);

const state = { statsTimer: null };

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

// -- listening: the JavaScript client package (clients/js), served as /static/realtime-client.js --

let client = null;

function realtime() {
  if (client) return client;
  client = new RealtimeClient({
    tokenProvider: async () => {
      const { token, expires_in } = await api("/auth/ws", { method: "POST" });
      return { token, expiresIn: expires_in };
    },
  });
  client.on("message", ({ topic, message }) => addLog("message", topic, message));
  client.on("gap", ({ topics, reason }) =>
    addLog("notice", topics.join(" "), "GAP (" + (reason || "unknown") + "): messages may have been missed"));
  client.on("authRevoked", ({ topics }) => {
    renderTopics();
    addLog("notice", topics.join(" "), "AUTH_REVOKED: listen again");
  });
  client.on("disconnected", ({ code, willRetry }) =>
    setStatus("disconnected (" + code + ")" + (willRetry ? ", reconnecting\u2026" : "")));
  client.on("connected", ({ reconnected, topics }) => {
    if (!reconnected) return;
    setStatus("listening", true);
    addLog("notice", topics.join(" "), "reconnected: topics with history were recovered, the others may have missed publications");
  });
  client.on("error", ({ error }) => setStatus("stopped: " + error.message));
  return client;
}

async function listen(topics) {
  await realtime().listen(topics);
  renderTopics();
  setStatus("listening", true);
}

function setStatus(text, ok = false) {
  $("listen-status").textContent = text;
  $("listen-status").className = ok ? "ok" : "muted";
}

function renderTopics() {
  $("listening").replaceChildren(...(client ? client.topics : []).map((topic) => {
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
