// The chat page: one WebSocket, many requests in flight, resume after drops.
// Answers are Markdown, rendered with marked and always sanitized by DOMPurify
// (the model may repeat anything a prompt or a document put in front of it).
(() => {
  "use strict";
  const root = document.getElementById("chat");
  const $ = (id) => document.getElementById(id);
  const messages = $("messages");
  const conn = $("conn");
  const requests = new Map(); // request_id -> entry (see newEntry)
  const awaitingAck = [];     // submissions sent, ack not yet received (FIFO)
  let socket = null;
  let retryDelay = 500;

  const ACTIVE = ["pending", "processing"];
  const STATUS_LABELS = { sending: "sending…", pending: "queued", processing: "generating" };
  const QUEUE_POLL_MS = 1000;
  const MAX_REPLAYS = 16;       // a socket follows at most 64 requests at once
  const LONG_PROMPT_CHARS = 600;
  const LONG_PROMPT_LINES = 10;

  const newId = () => (crypto.randomUUID ? crypto.randomUUID()
    : `${Date.now()}-${Math.random().toString(16).slice(2)}`);
  let sessionId = localStorage.getItem("po.session") || newId();
  localStorage.setItem("po.session", sessionId);
  $("session-id").textContent = sessionId.slice(0, 8);

  // --- Markdown ---------------------------------------------------------------

  // Links open elsewhere and tell the target nothing about this page.
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });
  // No images or background attributes (a remote load is a beacon that can carry
  // the conversation away), no forms or styles: an answer is text, lists, tables,
  // links and code. No id or name either: an element of the answer named like one
  // of the page's controls ("prompt", "rag") would take its place for getElementById.
  const PURIFY = {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "video", "audio"],
    FORBID_ATTR: ["style", "id", "name", "background", "srcset", "poster"],
  };

  function markdownToHtml(text) {
    const html = marked.parse(text, { async: false, gfm: true, breaks: true });
    return DOMPurify.sanitize(html, PURIFY); // every time: partial text is hostile too
  }

  function addCodeCopyButtons(container) {
    for (const pre of container.querySelectorAll("pre")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.setAttribute("aria-label", "Copy code");
      // The label is CSS content, so it is not part of the answer's text.
      button.onclick = () => copyText((pre.querySelector("code") || pre).textContent, button);
      pre.append(button);
    }
  }

  // --- clipboard --------------------------------------------------------------

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      legacyCopy(text); // plain-HTTP pages on a LAN address have no Clipboard API
    }
    button.dataset.copied = "true";
    setTimeout(() => delete button.dataset.copied, 1500);
  }

  function legacyCopy(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.style.position = "fixed"; area.style.opacity = "0";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }

  // --- scrolling --------------------------------------------------------------

  // Follow the stream only if the reader is at the bottom: never yank someone
  // who scrolled up to read an earlier answer.
  const nearBottom = () => messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
  const toBottom = () => { messages.scrollTop = messages.scrollHeight; };

  // --- messages ---------------------------------------------------------------

  function addMessage(role) {
    const li = document.createElement("li");
    li.className = `msg ${role}`;
    const body = document.createElement("div");
    body.className = "body";
    li.append(body);
    messages.append(li);
    toBottom();
    return li;
  }

  function addUserMessage(prompt) {
    const li = addMessage("user");
    li.querySelector(".body").textContent = prompt;
    const long = prompt.length > LONG_PROMPT_CHARS || prompt.split("\n").length > LONG_PROMPT_LINES;
    if (long) collapsible(li);
    return li;
  }

  // Long prompts fold to a few lines; the whole text stays in the DOM.
  function collapsible(li) {
    li.classList.add("collapsed");
    const more = document.createElement("button");
    more.type = "button"; more.className = "link more"; more.textContent = "show more";
    more.onclick = () => {
      const collapsed = li.classList.toggle("collapsed");
      more.textContent = collapsed ? "show more" : "show less";
    };
    li.append(more);
  }

  function button(className, text, onclick) {
    const b = document.createElement("button");
    b.type = "button"; b.className = `link ${className}`; b.textContent = text;
    b.onclick = onclick;
    return b;
  }

  // An answer bubble: body, typing dots, notices, sources, then a meta line.
  function addAnswer(entry) {
    const li = addMessage("assistant");
    li.querySelector(".body").classList.add("md");
    const typing = document.createElement("div");
    typing.className = "typing";
    typing.setAttribute("aria-label", "waiting for the answer");
    typing.innerHTML = "<span></span><span></span><span></span>";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = '<code class="rid"></code><span class="status"></span>';
    meta.append(
      button("copy-msg", "Copy", (e) => copyText(entry.text, e.currentTarget)),
      button("regenerate", "Regenerate", () => regenerate(entry)),
      button("cancel", "cancel", () => cancel(entry)),
    );
    li.querySelector(".body").after(typing);
    li.append(meta);
    entry.el = li;
    if (entry.regenerated) li.classList.add("regenerated");
    setStatus(entry, "sending");
    return li;
  }

  function newEntry(fields) {
    return { el: null, text: "", lastChunk: -1, done: false, replay: false, prompt: "",
      requestId: null, rag: true, regenerated: false, rendering: false, ...fields };
  }

  function bindRequest(entry, requestId) {
    entry.requestId = requestId;
    requests.set(requestId, entry);
    entry.el.dataset.requestId = requestId;
    const rid = entry.el.querySelector(".rid");
    rid.textContent = requestId.slice(0, 8); rid.title = requestId;
  }

  function setStatus(entry, status) {
    entry.status = status;
    const s = entry.el.querySelector(".status");
    s.textContent = STATUS_LABELS[status] || status;
    s.dataset.status = status;
    entry.el.dataset.status = status;
    if (entry.done) entry.el.querySelector(".cancel")?.remove();
    updateTyping(entry);
    updateStop();
  }

  // The dots say "working on it" until the first token (or the end).
  function updateTyping(entry) {
    entry.el.querySelector(".typing").hidden = entry.done || entry.text.length > 0;
  }

  function render(entry) {
    const stick = nearBottom();
    const body = entry.el.querySelector(".body");
    body.innerHTML = markdownToHtml(entry.text);
    addCodeCopyButtons(body);
    updateTyping(entry);
    if (stick) toBottom();
  }

  // Tokens arrive in bursts: re-render the whole text at most once a frame.
  function scheduleRender(entry) {
    if (entry.rendering) return;
    entry.rendering = true;
    requestAnimationFrame(() => { entry.rendering = false; render(entry); });
  }

  // A notice of a kind replaces the earlier one (a resumed stream repeats its end).
  function showNotice(entry, kind, text) {
    let notice = entry.el.querySelector(`.notice[data-kind="${kind}"]`);
    if (!notice) {
      notice = document.createElement("div");
      notice.className = `notice ${kind === "reason" ? "error" : ""}`;
      notice.dataset.kind = kind;
      entry.el.querySelector(".typing").after(notice);
    }
    notice.textContent = text;
    return notice;
  }

  function showFinish(entry, finishReason) {
    if (finishReason === "length") {
      showNotice(entry, "length", "Cut short: the answer reached its max tokens limit.");
    } else if (finishReason && !["stop", "cancelled", "error", "expired"].includes(finishReason)) {
      showNotice(entry, "finish", `Ended early: ${finishReason}.`);
    }
  }

  // Why a turn has no complete answer; brought into view, as errors must be seen.
  function showReason(entry, status, message) {
    const fallback = { cancelled: "Cancelled by the client.", expired: "The request expired." };
    const notice = showNotice(entry, "reason", message || fallback[status] || `Request ${status}.`);
    notice.scrollIntoView({ block: "nearest" });
  }

  function showSources(entry, passages) {
    entry.el.querySelector(".sources")?.remove();
    if (!passages || !passages.length) return;
    const details = document.createElement("details");
    details.className = "sources";
    const summary = document.createElement("summary");
    summary.textContent = `Sources (${passages.length})`;
    const list = document.createElement("ol");
    for (const passage of passages) list.append(sourceItem(passage));
    details.append(summary, list);
    entry.el.querySelector(".meta").before(details);
  }

  function sourceItem(passage) {
    const li = document.createElement("li");
    const title = document.createElement("b");
    title.textContent = passage.title || passage.source || `document ${passage.document_id}`;
    const where = document.createElement("small");
    const score = typeof passage.score === "number" ? ` · score ${passage.score.toPrecision(2)}` : "";
    where.textContent = `${passage.source || ""}${score}`;
    const text = document.createElement("blockquote");
    text.textContent = passage.text; // document text, shown as text
    li.append(title, " ", where, text);
    return li;
  }

  // --- REST look-ups (same-origin, with the page's session) -------------------

  async function getJSON(url) {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      return response.ok ? await response.json() : null;
    } catch {
      return null;
    }
  }

  const statusOf = (requestId) => getJSON(`/api/v1/status/${encodeURIComponent(requestId)}`);
  const sessionUrl = (id) => `/api/v1/sessions/${encodeURIComponent(id)}`;

  // A change (rename, delete); a staff session's cookie needs the CSRF token.
  async function sendJSON(method, url, body) {
    try {
      const response = await fetch(url, {
        method,
        headers: { Accept: "application/json", "Content-Type": "application/json",
          "X-CSRFToken": root.dataset.csrf || "" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return response.ok;
    } catch {
      return false;
    }
  }

  // The ack always says "processing"; the record says whether it is still waiting
  // for a worker, and its place in the queue.
  async function watchQueue(entry) {
    while (!entry.done && entry.lastChunk < 0) {
      const record = await statusOf(entry.requestId);
      if (!record || entry.done || entry.lastChunk >= 0) return;
      setStatus(entry, record.status === "pending" ? "pending" : "processing");
      if (record.queue_position) {
        entry.el.querySelector(".status").textContent = `queued (position ${record.queue_position})`;
      }
      if (record.status !== "pending") return;
      await new Promise((resolve) => setTimeout(resolve, QUEUE_POLL_MS));
    }
  }

  // The WebSocket result does not carry the passages: the record does.
  async function loadSources(entry) {
    if (!entry.rag) return;
    const record = await statusOf(entry.requestId);
    if (record) showSources(entry, record.passages);
  }

  // --- socket protocol --------------------------------------------------------

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function cancel(entry) {
    if (entry.requestId) send({ type: "cancel", request_id: entry.requestId });
    else entry.cancelOnAck = true;
  }

  const active = () => [...requests.values()].filter((e) => !e.done);

  // Stop cancels everything this page is waiting for.
  function stopAll() {
    for (const entry of active()) cancel(entry);
    for (const pending of awaitingAck) cancel(pending.entry);
  }

  function updateStop() {
    $("stop").hidden = active().length === 0 && awaitingAck.length === 0;
  }

  const handlers = {
    ack(m) {
      const pending = awaitingAck.shift();
      if (!pending) return;
      if (requests.has(m.request_id)) return; // an idempotent resend: already known
      const entry = pending.entry;
      bindRequest(entry, m.request_id);
      setStatus(entry, "processing");
      if (entry.cancelOnAck) cancel(entry);
      else watchQueue(entry);
      loadConversations();
    },
    token(m) {
      const entry = requests.get(m.request_id);
      if (!entry || m.chunk <= entry.lastChunk) return; // exactly once, in order
      entry.lastChunk = m.chunk;
      entry.text += m.data;
      entry.el.dataset.tokens = String(Number(entry.el.dataset.tokens || 0) + 1);
      if (entry.status === "pending") setStatus(entry, "processing");
      updateTyping(entry);
      scheduleRender(entry);
    },
    reset(m) {
      const entry = requests.get(m.request_id);
      if (!entry) return;
      entry.text = ""; entry.lastChunk = -1; entry.el.dataset.tokens = "0";
      render(entry);
    },
    result(m) {
      const entry = requests.get(m.request_id);
      if (!entry) return;
      entry.done = true; entry.replay = false;
      if (m.result !== null) entry.text = m.result; // the stored answer (post-processed)
      render(entry);
      setStatus(entry, m.status);
      showFinish(entry, m.finish_reason);
      if (m.status === "cancelled") showReason(entry, m.status, "");
      if (m.status === "completed") loadSources(entry);
    },
    error(m) {
      if (!m.request_id) return rejected(m);
      const entry = requests.get(m.request_id);
      if (!entry) return; // about a request this page does not show
      entry.done = true; entry.replay = false;
      render(entry);
      setStatus(entry, m.status || "failed");
      showReason(entry, entry.status, m.error.message);
    },
  };

  // A submission the server refused (bad field, limits): it never got an id.
  function rejected(m) {
    const pending = awaitingAck.shift();
    const entry = pending ? pending.entry : newEntry({});
    if (!entry.el) addAnswer(entry);
    entry.done = true;
    setStatus(entry, "rejected");
    showReason(entry, "rejected", m.error.message);
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${proto}://${location.host}${root.dataset.wsPath}`);
    conn.dataset.state = "connecting"; conn.textContent = "connecting…";
    socket.onopen = () => {
      retryDelay = 500;
      conn.dataset.state = "open"; conn.textContent = "connected";
      // Resume what was streaming (and replay the partial text of restored turns
      // that ended without an answer), and resend unacknowledged submissions: the
      // idempotency key makes the server answer with the same request.
      for (const [requestId, entry] of requests) {
        if (!entry.done || entry.replay) {
          send({ type: "resume", request_id: requestId, last_chunk: entry.lastChunk });
        }
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

  // --- composing --------------------------------------------------------------

  function submit(prompt, extra = {}) {
    const entry = newEntry({ prompt, rag: $("rag").checked, regenerated: Boolean(extra.metadata) });
    addAnswer(entry);
    const message = {
      type: "infer", prompt, session_id: sessionId, stream: true,
      backend: $("backend").value, idempotency_key: newId(), ...extra,
    };
    if (!entry.rag) message.rag = false; // skip retrieval for this question
    const maxTokens = parseInt($("max-tokens").value, 10);
    if (maxTokens > 0) message.max_tokens = maxTokens;
    awaitingAck.push({ entry, submit: message });
    updateStop();
    send(message);
  }

  // The same prompt again in the same session; the server records it as a new
  // turn, marked in its metadata so a reload shows it as another answer.
  function regenerate(entry) {
    submit(entry.prompt, { metadata: { regenerate_of: entry.requestId } });
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = $("prompt").value;
    if (!prompt.trim()) return;
    addUserMessage(prompt);
    submit(prompt);
    $("prompt").value = "";
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").onclick = stopAll;
  for (const example of document.querySelectorAll(".example")) {
    example.onclick = () => { $("prompt").value = example.textContent; $("prompt").focus(); };
  }
  $("new-chat").onclick = $("new-chat-bar").onclick = () => switchTo(newId());

  // --- restoring a conversation after a reload --------------------------------

  // A session's turns carry all a reload shows (status, result, error,
  // finish_reason, passages, and the metadata/params that mark regenerations
  // and RAG-less questions): one call restores the conversation.
  function restoreTurn(turn) {
    const regenerated = Boolean(turn.metadata && turn.metadata.regenerate_of);
    if (!regenerated) addUserMessage(turn.prompt);
    const entry = newEntry({ prompt: turn.prompt, text: turn.result || "", regenerated,
      done: !ACTIVE.includes(turn.status), rag: !(turn.params && turn.params.rag
        && turn.params.rag.enabled === false) });
    addAnswer(entry);
    bindRequest(entry, turn.request_id);
    render(entry);
    setStatus(entry, turn.status);
    if (turn.status === "completed") {
      showFinish(entry, turn.finish_reason);
      showSources(entry, turn.passages);
    } else if (entry.done) {
      showReason(entry, turn.status, turn.error);
    }
    return entry;
  }

  async function restoreSession() {
    const restoring = sessionId;
    const session = await getJSON(sessionUrl(restoring));
    if (!session || restoring !== sessionId) return; // switched away meanwhile
    const entries = session.turns.map(restoreTurn);
    // A turn that ended without an answer keeps its partial text in its stream:
    // replay the latest few over the socket (now, or once it opens).
    const partial = entries.filter((e) => e.done && e.status !== "completed" && !e.text);
    for (const entry of partial.slice(-MAX_REPLAYS)) {
      entry.replay = true;
      send({ type: "resume", request_id: entry.requestId, last_chunk: entry.lastChunk });
    }
    toBottom();
  }

  // --- conversations: the sidebar (GET /api/v1/sessions/) -------------------------

  const sidebar = $("chat-layout");
  const conversations = $("conversations");

  function setSidebar(open) {
    sidebar.dataset.sidebar = open ? "open" : "closed";
    $("sidebar-toggle").setAttribute("aria-expanded", String(open));
  }

  // Show another conversation (or a new, empty one): its turns come from the server.
  function switchTo(id) {
    sessionId = id;
    localStorage.setItem("po.session", sessionId);
    $("session-id").textContent = sessionId.slice(0, 8);
    messages.replaceChildren();
    requests.clear();
    updateStop();
    markCurrent();
    setSidebar(false);
    return restoreSession();
  }

  function markCurrent() {
    for (const li of conversations.children) {
      if (li.dataset.sessionId === sessionId) li.setAttribute("aria-current", "true");
      else li.removeAttribute("aria-current");
    }
  }

  function exportLink(id, format, label) {
    const a = document.createElement("a");
    a.className = "conv-export";
    a.dataset.format = format;
    a.href = `${sessionUrl(id)}/export?format=${format}`;
    a.download = "";
    a.textContent = label;
    a.title = `Download as ${format === "json" ? "JSON" : "Markdown"}`;
    return a;
  }

  function conversationItem(conversation) {
    const li = document.createElement("li");
    li.className = "conversation";
    li.dataset.sessionId = conversation.session_id;
    const open = document.createElement("button");
    open.type = "button"; open.className = "conv-title";
    open.textContent = conversation.title || conversation.session_id.slice(0, 8);
    open.title = open.textContent;
    open.onclick = () => { if (conversation.session_id !== sessionId) switchTo(conversation.session_id); };
    const actions = document.createElement("div");
    actions.className = "conv-actions";
    actions.append(
      button("conv-rename", "Rename", () => startRename(li, conversation)),
      exportLink(conversation.session_id, "json", "JSON"),
      exportLink(conversation.session_id, "markdown", "MD"),
      button("conv-delete", "Delete", () => deleteConversation(conversation)),
    );
    li.append(open, actions);
    return li;
  }

  async function loadConversations() {
    const page = await getJSON("/api/v1/sessions/?page_size=100");
    if (!page || conversations.querySelector(".conv-edit")) return; // keep an edit going
    conversations.replaceChildren(...page.results.map(conversationItem));
    $("conversations-empty").hidden = page.results.length > 0;
    markCurrent();
  }

  // Inline rename: Enter (or leaving the field) saves, Escape gives up; an
  // empty title goes back to the first prompt.
  function startRename(li, conversation) {
    const title = li.querySelector(".conv-title");
    const input = document.createElement("input");
    input.className = "conv-edit"; input.value = title.textContent; input.maxLength = 200;
    input.setAttribute("aria-label", "Conversation title");
    let finished = false;
    const finish = async (save) => {
      if (finished) return;
      finished = true;
      const value = input.value.trim();
      if (save && value !== title.textContent) {
        title.textContent = value || title.textContent;
        await sendJSON("PATCH", sessionUrl(conversation.session_id), { title: value });
      }
      input.replaceWith(title);
      loadConversations();
    };
    input.onkeydown = (event) => {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      if (event.key === "Escape") finish(false);
    };
    input.onblur = () => finish(true);
    title.replaceWith(input);
    input.focus();
    input.select();
  }

  async function deleteConversation(conversation) {
    if (!confirm(`Delete "${conversation.title}"? Its turns are removed for good.`)) return;
    await sendJSON("DELETE", sessionUrl(conversation.session_id));
    if (conversation.session_id === sessionId) await switchTo(newId());
    await loadConversations();
  }

  $("sidebar-toggle").onclick = () => setSidebar(sidebar.dataset.sidebar !== "open");
  // A tap beside the open drawer (on the layout's backdrop) closes it.
  sidebar.addEventListener("click", (event) => { if (event.target === sidebar) setSidebar(false); });
  setSidebar(false);

  // For tests and debugging: drop the socket as a network failure would.
  window.chatDebug = { dropSocket: () => socket && socket.close() };
  loadConversations();
  restoreSession().finally(() => {
    root.dataset.ready = "true"; // the empty state waits for the restore
    connect();
  });
})();
