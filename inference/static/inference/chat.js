// The chat page: one WebSocket, many requests in flight, resume after drops.
(() => {
  "use strict";
  const root = document.getElementById("chat");
  const $ = (id) => document.getElementById(id);
  const messages = $("messages");
  const conn = $("conn");
  const requests = new Map(); // request_id -> {el, text, lastChunk, done}
  const awaitingAck = [];     // submissions sent, ack not yet received (FIFO)
  let socket = null;
  let retryDelay = 500;

  const newId = () => (crypto.randomUUID ? crypto.randomUUID()
    : `${Date.now()}-${Math.random().toString(16).slice(2)}`);
  let sessionId = localStorage.getItem("po.session") || newId();
  localStorage.setItem("po.session", sessionId);
  $("session-id").textContent = sessionId.slice(0, 8);

  function bubble(role, text) {
    const li = document.createElement("li");
    li.className = `msg ${role}`;
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = text;
    li.append(body);
    messages.append(li);
    messages.scrollTop = messages.scrollHeight;
    return li;
  }

  function meta(el, requestId) {
    const m = document.createElement("div");
    m.className = "meta";
    m.innerHTML = '<code class="rid"></code><span class="status" data-status="pending">pending</span>';
    m.querySelector(".rid").textContent = requestId.slice(0, 8);
    m.querySelector(".rid").title = requestId;
    const cancel = document.createElement("button");
    cancel.type = "button"; cancel.className = "link cancel"; cancel.textContent = "cancel";
    cancel.onclick = () => send({ type: "cancel", request_id: requestId });
    m.append(cancel);
    el.append(m);
    el.dataset.requestId = requestId;
  }

  function setStatus(entry, status) {
    const s = entry.el.querySelector(".status");
    s.textContent = status; s.dataset.status = status;
    entry.el.dataset.status = status;
    if (entry.done) entry.el.querySelector(".cancel")?.remove();
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  const handlers = {
    ack(m) {
      const pending = awaitingAck.shift();
      if (!pending) return;
      if (requests.has(m.request_id)) return; // an idempotent resend: already known
      const entry = { el: pending.el, text: "", lastChunk: -1, done: false, submit: pending.submit };
      requests.set(m.request_id, entry);
      meta(entry.el, m.request_id);
      setStatus(entry, "processing");
    },
    token(m) {
      const entry = requests.get(m.request_id);
      if (!entry || m.chunk <= entry.lastChunk) return; // exactly once, in order
      entry.lastChunk = m.chunk;
      entry.text += m.data;
      entry.el.dataset.tokens = String(Number(entry.el.dataset.tokens || 0) + 1);
      entry.el.querySelector(".body").textContent = entry.text;
      messages.scrollTop = messages.scrollHeight;
    },
    reset(m) {
      const entry = requests.get(m.request_id);
      if (!entry) return;
      entry.text = ""; entry.lastChunk = -1; entry.el.dataset.tokens = "0";
      entry.el.querySelector(".body").textContent = "";
    },
    result(m) {
      const entry = requests.get(m.request_id);
      if (!entry) return;
      entry.done = true;
      if (m.result !== null) entry.el.querySelector(".body").textContent = m.result;
      setStatus(entry, m.status);
    },
    error(m) {
      const entry = m.request_id && requests.get(m.request_id);
      if (!entry) { // a rejected submission
        const pending = awaitingAck.shift();
        const el = pending ? pending.el : bubble("assistant", "");
        el.querySelector(".body").innerHTML = '<span class="error"></span>';
        el.querySelector(".error").textContent = m.error.message;
        return;
      }
      entry.done = true;
      const err = document.createElement("div");
      err.className = "error"; err.textContent = m.error.message;
      entry.el.querySelector(".body").after(err);
      setStatus(entry, m.status || "failed");
    },
  };

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${proto}://${location.host}${root.dataset.wsPath}`);
    conn.dataset.state = "connecting"; conn.textContent = "connecting…";
    socket.onopen = () => {
      retryDelay = 500;
      conn.dataset.state = "open"; conn.textContent = "connected";
      // Resume what was streaming, and resend unacknowledged submissions: the
      // idempotency key makes the server answer with the same request.
      for (const [requestId, entry] of requests) {
        if (!entry.done) send({ type: "resume", request_id: requestId, last_chunk: entry.lastChunk });
      }
      for (const pending of awaitingAck) send(pending.submit);
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      (handlers[message.type] || (() => {}))(message);
    };
    socket.onclose = () => {
      conn.dataset.state = "reconnecting"; conn.textContent = "reconnecting…";
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 5000);
    };
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = $("prompt").value;
    if (!prompt.trim()) return;
    bubble("user", prompt);
    const submit = {
      type: "infer", prompt, session_id: sessionId, stream: true,
      backend: $("backend").value, idempotency_key: newId(),
    };
    awaitingAck.push({ el: bubble("assistant", ""), submit });
    send(submit);
    $("prompt").value = "";
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("new-chat").onclick = () => {
    sessionId = newId();
    localStorage.setItem("po.session", sessionId);
    $("session-id").textContent = sessionId.slice(0, 8);
    messages.replaceChildren();
    requests.clear();
  };

  // Continue the conversation after a reload: show its earlier turns, and
  // resume (over the socket, once open) any that are still running.
  async function restoreSession() {
    const response = await fetch(`/api/v1/sessions/${encodeURIComponent(sessionId)}`);
    if (response.status !== 200) return;
    for (const turn of (await response.json()).turns) {
      bubble("user", turn.prompt);
      const el = bubble("assistant", turn.result || "");
      const done = !["pending", "processing"].includes(turn.status);
      const entry = { el, text: "", lastChunk: -1, done };
      requests.set(turn.request_id, entry);
      meta(el, turn.request_id);
      setStatus(entry, turn.status);
    }
  }

  // For tests and debugging: drop the socket as a network failure would.
  window.chatDebug = { dropSocket: () => socket && socket.close() };
  restoreSession().finally(connect);
})();
