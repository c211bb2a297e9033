// The live view of /dashboard. It polls GET /v1/status and GET /v1/dead-letters and
// redraws the page from them, keeping the server-rendered figures current.
//
// Everything that comes from the broker is written with textContent or as SVG
// attributes, never parsed as HTML: message bodies and receiver URLs are chosen by
// clients. The admin key lives in sessionStorage and travels only in the
// Authorization header, never in a URL.
"use strict";

(() => {
  const KEY_STORAGE = "mqpy.adminKey";
  const POLL_MS = 1000;
  const MAX_RETRY_MS = 10000;
  const LETTERS_SHOWN_PER_RECEIVER = 10;
  const BODY_PREVIEW_CHARS = 160;
  // Nodes beat every 2 s: one heard from longer ago than two beats is running late.
  const NODE_LATE_SECONDS = 5;
  const SVG_NS = "http://www.w3.org/2000/svg";
  // The chart averages each series over bins of this many seconds, by range: at low
  // traffic one-second points are a row of isolated spikes.
  const BIN_SECONDS = new Map([
    [60, 2],
    [300, 5],
    [600, 10],
  ]);
  // A second click within this long confirms what cannot be undone (purge, delete).
  const CONFIRM_MS = 4000;
  // Drawn in this order: published, dashed, stays visible over an equal delivered line.
  const SERIES = ["delivered", "published", "failed"];
  // A receiver's states and kinds, each styled and explained; a newer server's others
  // show as plain text.
  const RECEIVER_STATES = new Map([
    ["healthy", "its last attempt succeeded, or none was made yet"],
    ["retrying", "its latest attempts failed; each delivery is retried"],
    ["failing", "failing for want of the receiver: given fewer at once, paused after a run of failures"],
    ["paused", "paused: nothing is sent to it until it is resumed; its messages wait"],
    ["disabled", "disabled by the broker: every attempt failed for its disable-after; its messages wait"],
  ]);
  // Nothing is delivered to a receiver in these states until it is resumed.
  const STOPPED = new Set(["paused", "disabled"]);
  const RECEIVER_KINDS = new Map([
    ["seed", "connected through POST /connect"],
    ["push", "a subscription made through POST /v1/subscriptions"],
    ["pull", "a pull subscription: its consumers ask for its messages"],
  ]);

  const $ = (id) => document.getElementById(id);
  const keysRequired = document.body.dataset.keysRequired === "true";

  const state = {
    key: readKey(),
    generation: 0, // bumped when the key changes: answers to the old key are dropped
    timer: 0,
    polling: false,
    pollAgain: false,
    retries: 0,
    windowSeconds: 300,
    feed: null, // the last status feed drawn
  };

  class HttpError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // -- the key ------------------------------------------------------------------------

  function readKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return ""; // storage disabled: the key lasts until the page is left
    }
  }

  function setKey(key) {
    state.key = key;
    state.generation += 1;
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      // storage disabled: keep the key in memory only
    }
    $("forget-key").hidden = !key;
  }

  function askForKey(message) {
    $("key-panel").hidden = false;
    $("key-error").textContent = message;
    $("live").hidden = true;
    for (const element of document.querySelectorAll(".live-only")) element.hidden = true;
    setStatus("key", "Admin key needed for the live view");
  }

  function authHeaders() {
    return state.key ? { Authorization: "Bearer " + state.key } : {};
  }

  // -- talking to the broker ----------------------------------------------------------

  async function request(path, options = {}) {
    const response = await fetch(path, {
      cache: "no-store",
      ...options,
      headers: { ...authHeaders(), ...(options.headers || {}) },
    });
    if (response.status === 204) return null;
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const problem = await response.json();
        if (problem && typeof problem.detail === "string") detail = problem.detail;
      } catch {
        // not problem+json: keep the status text
      }
      throw new HttpError(response.status, detail);
    }
    return response.json();
  }

  async function poll() {
    if (state.polling) {
      state.pollAgain = true;
      return;
    }
    clearTimeout(state.timer);
    state.polling = true;
    const generation = state.generation;
    let next = POLL_MS;
    try {
      const [feed, letters] = await Promise.all([
        request("/v1/status"),
        request("/v1/dead-letters"),
      ]);
      if (generation === state.generation) {
        state.retries = 0;
        render(feed, letters.dead_letters);
      }
    } catch (error) {
      next = generation === state.generation ? failed(error) : 0;
    } finally {
      state.polling = false;
    }
    if (next === null) return; // waiting for a key
    if (state.pollAgain) {
      state.pollAgain = false;
      next = 0;
    }
    state.timer = setTimeout(poll, next);
  }

  // What to do after a failed poll: the delay before the next one, or null to stop.
  function failed(error) {
    if (error instanceof HttpError && error.status === 401) {
      const hadKey = Boolean(state.key);
      setKey("");
      askForKey(hadKey ? "That key was not accepted: " + error.message + "." : "");
      return null;
    }
    if (error instanceof HttpError && error.status === 403) {
      setKey("");
      askForKey("That key is not an admin key; the live view needs one.");
      return null;
    }
    state.retries += 1;
    const reason = error instanceof HttpError ? error.message : "the broker does not answer";
    setStatus("offline", "Offline: " + reason + "; retrying");
    return Math.min(POLL_MS * 2 ** state.retries, MAX_RETRY_MS);
  }

  async function redrive(receiverId, button) {
    const label = button.textContent;
    button.dataset.busy = "true";
    button.disabled = true;
    button.textContent = "Redriving…";
    const result = $("redrive-result");
    try {
      const body = receiverId === null ? {} : { receiver_id: receiverId };
      const answer = await request("/v1/dead-letters/redrive", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const whom = receiverId === null ? "their receivers" : "receiver #" + receiverId;
      result.dataset.kind = "ok";
      const sent = plural(answer.redriven, "dead letter");
      result.textContent = `Sent ${sent} back to ${whom}.`;
    } catch (error) {
      result.dataset.kind = "error";
      result.textContent = "Redrive failed: " + error.message;
    } finally {
      button.textContent = label;
      delete button.dataset.busy;
      button.disabled = false; // the next redraw disables it again if nothing is left
      poll();
    }
  }

  // Run `work` for a button: busy while it runs, its outcome (a sentence) in `result`,
  // then a poll so the page shows the change.
  async function act(button, result, busyText, work) {
    const label = button.dataset.label || button.textContent;
    button.dataset.busy = "true";
    button.disabled = true;
    button.textContent = busyText;
    try {
      result.textContent = await work();
      result.dataset.kind = "ok";
    } catch (error) {
      result.dataset.kind = "error";
      result.textContent = error.message;
    } finally {
      button.textContent = label;
      delete button.dataset.busy;
      delete button.dataset.label;
      button.disabled = false; // the next redraw disables it again if it no longer applies
      poll();
    }
  }

  // What cannot be undone asks first: the first click turns the button into the
  // question, a second one within CONFIRM_MS does it.
  function confirmed(button, question) {
    if (button.dataset.confirm === "true") {
      delete button.dataset.confirm;
      return true;
    }
    button.dataset.confirm = "true";
    button.dataset.label = button.textContent;
    button.textContent = question;
    setTimeout(() => {
      if (button.dataset.confirm !== "true") return;
      delete button.dataset.confirm;
      button.textContent = button.dataset.label;
      delete button.dataset.label;
    }, CONFIRM_MS);
    return false;
  }

  function purgeAll(button) {
    if (!confirmed(button, "Purge all? Click again")) return;
    act(button, $("redrive-result"), "Purging…", async () => {
      const answer = await request("/v1/dead-letters", { method: "DELETE" });
      return `Dropped ${plural(answer.purged, "dead letter")} for good.`;
    });
  }

  function purgeReceiver(receiverId, button) {
    if (!confirmed(button, "Purge? Click again")) return;
    act(button, $("redrive-result"), "Purging…", async () => {
      const path = `/v1/subscriptions/${receiverId}/dead-letters`;
      const answer = await request(path, { method: "DELETE" });
      return `Dropped ${plural(answer.purged, "dead letter")} of receiver #${receiverId}.`;
    });
  }

  function oneDeadLetter(button, action) {
    const tr = button.closest("tr");
    const receiverId = tr.dataset.receiverId;
    const messageId = tr.dataset.messageId;
    const path = `/v1/subscriptions/${receiverId}/dead-letters/${encodeURIComponent(messageId)}`;
    const redriving = action === "redrive";
    act(button, $("redrive-result"), redriving ? "Redriving…" : "Dropping…", async () => {
      if (redriving) await request(path + "/redrive", { method: "POST" });
      else await request(path, { method: "DELETE" });
      const done = redriving ? "sent back to" : "dropped for good for";
      return `Message ${messageId}: ${done} receiver #${receiverId}.`;
    });
  }

  function switchReceiver(tr, button) {
    const id = tr.dataset.receiverId;
    const resume = STOPPED.has(tr.dataset.state);
    act(button, $("receiver-result"), resume ? "Resuming…" : "Pausing…", async () => {
      await request(`/v1/subscriptions/${id}/${resume ? "resume" : "pause"}`, { method: "POST" });
      return resume
        ? `Receiver #${id} resumed: its messages are delivered again.`
        : `Receiver #${id} paused: its messages wait until it is resumed.`;
    });
  }

  // What "1h" or "15m" means in the replay form: that long ago.
  const AGO_MS = { s: 1e3, m: 6e4, h: 36e5, d: 864e5 };

  function pointInTime(text) {
    const ago = /^(\d+(?:\.\d+)?)\s*([smhd])$/i.exec(text);
    if (ago) return new Date(Date.now() - Number(ago[1]) * AGO_MS[ago[2].toLowerCase()]).toISOString();
    return text; // an RFC 3339 time, checked by the broker
  }

  function seekReceiver(tr, input, button) {
    const id = tr.dataset.receiverId;
    const text = input.value.trim();
    if (!text) {
      $("receiver-result").dataset.kind = "error";
      $("receiver-result").textContent =
        "Say where to replay from: a duration ago (1h, 15m) or a time (2026-11-26T23:00:00Z).";
      return;
    }
    act(button, $("receiver-result"), "Replaying…", async () => {
      const answer = await request(`/v1/subscriptions/${id}/seek`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ time: pointInTime(text) }),
      });
      return (
        `Receiver #${id} replays from ${answer.time}: ${plural(answer.due, "message")} ` +
        `due again, ${answer.acked} acknowledged.`
      );
    });
  }

  function deleteReceiver(tr, button) {
    if (!confirmed(button, "Delete? Click again")) return;
    const id = tr.dataset.receiverId;
    act(button, $("receiver-result"), "Deleting…", async () => {
      await request(`/v1/subscriptions/${id}`, { method: "DELETE" });
      return `Receiver #${id} deleted; its undelivered messages were dropped for it.`;
    });
  }

  async function lookUp(messageId) {
    const error = $("lookup-error");
    error.textContent = "";
    try {
      const message = await request("/v1/messages/" + encodeURIComponent(messageId));
      renderMessage(message);
    } catch (failure) {
      $("lookup-result").hidden = true;
      error.textContent = failure.message;
    }
  }

  // -- drawing ------------------------------------------------------------------------

  function render(feed, letters) {
    state.feed = feed;
    $("readers").textContent = String(feed.readers);
    $("writers").textContent = String(feed.writers);
    $("queue-length").textContent = String(feed.queue_length);
    $("completed-sends").textContent = String(feed.completed_sends);
    $("dead-letter-count").textContent = String(feed.dead_letters);
    for (const element of document.querySelectorAll(".live-only")) element.hidden = false;
    $("key-panel").hidden = true;
    $("live").hidden = false;
    drawThroughput();
    renderTopics(feed);
    renderReceivers(feed);
    renderNodes(feed);
    renderDeadLetters(feed, letters);
    setStatus("live", "Live · updated " + clock(feed.at));
  }

  function setStatus(kind, text) {
    const pill = $("live-status");
    pill.dataset.state = kind;
    pill.textContent = text;
  }

  function drawThroughput() {
    if (!state.feed) return;
    // The feed's last point is the second still running: leave it out, or every
    // chart would end in a dip.
    const points = state.feed.throughput.slice(-state.windowSeconds - 1, -1);
    const binSeconds = BIN_SECONDS.get(state.windowSeconds) || 1;
    const bins = binned(points, binSeconds);
    const svg = $("throughput-chart");
    const width = Math.max(svg.clientWidth, 300);
    const height = Math.max(svg.clientHeight, 120);
    const box = { left: 44, right: 12, top: 10, bottom: 24 };
    const peak = Math.max(0, ...points.map((p) => Math.max(p.published, p.delivered, p.failed)));
    const binPeak = Math.max(0, ...bins.map((b) => Math.max(b.published, b.delivered, b.failed)));
    const top = niceCeiling(Math.max(binPeak, 0.5));
    const step = points.length > 1 ? (width - box.left - box.right) / (points.length - 1) : 0;
    const x = (i) => box.left + i * step;
    const y = (value) => box.top + (1 - value / top) * (height - box.top - box.bottom);

    const parts = [];
    for (const value of [0, top / 2, top]) {
      const at = y(value);
      const grid = { class: "grid", x1: box.left, x2: width - box.right, y1: at, y2: at };
      parts.push(svgElement("line", grid));
      const label = { class: "axis", x: box.left - 6, y: at + 4, "text-anchor": "end" };
      parts.push(svgElement("text", label, formatCount(value)));
    }
    const tick = state.windowSeconds <= 60 ? 15 : state.windowSeconds <= 300 ? 60 : 120;
    for (let back = state.windowSeconds; back >= 0; back -= tick) {
      const i = points.length - back; // the last point is one second ago
      if (i < 0) continue;
      const anchor = back === 0 ? "end" : i === 0 ? "start" : "middle";
      const at = x(Math.min(i, points.length - 1));
      const label = { class: "axis", x: at, y: height - 6, "text-anchor": anchor };
      parts.push(svgElement("text", label, back === 0 ? "now" : "−" + formatDuration(back)));
    }
    if (bins.length) {
      const point = (at, value) => `${x(at).toFixed(1)},${y(value).toFixed(1)}`;
      const line = (name) => bins.map((b, i) => (i ? "L" : "M") + point(b.at, b[name])).join("");
      const floor = `L${point(bins[bins.length - 1].at, 0)}L${point(bins[0].at, 0)}Z`;
      parts.push(svgElement("path", { class: "area-delivered", d: line("delivered") + floor }));
      for (const name of SERIES) {
        parts.push(svgElement("path", { class: "line line-" + name, d: line(name) }));
      }
    }
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren(...parts);

    const totals = {};
    for (const name of SERIES) {
      totals[name] = points.reduce((sum, point) => sum + point[name], 0);
      $("tp-" + name).textContent = formatCount(totals[name]);
    }
    const span = formatDuration(state.windowSeconds);
    const averaged = binSeconds > 1 ? ` · chart: per second, averaged over ${binSeconds} s` : "";
    $("tp-summary").textContent = `in the last ${span} · peak ${formatCount(peak)}/s${averaged}`;
    svg.setAttribute(
      "aria-label",
      `Throughput over the last ${span}: ${totals.published} published, ` +
        `${totals.delivered} delivered, ${totals.failed} failed attempts`,
    );
  }

  // Each series averaged per second over bins of `size` seconds, the last bin ending at
  // the newest point; `at` is where a bin is drawn, as an index into `points`.
  function binned(points, size) {
    const bins = [];
    for (let end = points.length; end > 0; end -= size) {
      const start = Math.max(0, end - size);
      const bin = { at: (start + end - 1) / 2 };
      for (const name of SERIES) {
        let sum = 0;
        for (let i = start; i < end; i += 1) sum += points[i][name];
        bin[name] = sum / size;
      }
      bins.unshift(bin);
    }
    if (bins.length) {
      bins[0].at = 0;
      bins[bins.length - 1].at = points.length - 1;
    }
    return bins;
  }

  function renderTopics(feed) {
    showTable("topics", feed.topics.length > 0);
    const rows = $("topics").tBodies[0];
    syncChildren(rows, feed.topics, (topic) => topic.topic, () => row(6), updateTopicRow);
  }

  function updateTopicRow(tr, topic) {
    const cells = tr.cells;
    const age = topic.oldest_undelivered_age_seconds;
    // A backlog nobody is subscribed to take: it only grows.
    const orphan = topic.backlog > 0 && topic.receivers === 0;
    tr.dataset.orphan = String(orphan);
    cells[0].replaceChildren(topic.topic);
    if (orphan) {
      const badge = element("span", "badge orphan-badge", "no receiver");
      badge.title = "messages wait here: no receiver or subscription matches this topic";
      cells[0].append(" ", badge);
    }
    setNumber(cells[1], topic.receivers);
    setNumber(cells[2], topic.backlog);
    setNumber(cells[3], age === null ? "—" : formatDuration(age));
    setNumber(cells[4], formatRate(topic.publish_rate));
    setNumber(cells[5], formatRate(topic.delivery_rate));
  }

  function renderReceivers(feed) {
    showTable("receivers", feed.receivers.length > 0);
    const rows = $("receivers").tBodies[0];
    const update = (tr, receiver) => updateReceiverRow(tr, receiver, feed.at);
    syncChildren(rows, feed.receivers, (receiver) => receiver.id, buildReceiverRow, update);
  }

  function buildReceiverRow() {
    const tr = row(10);
    const pause = element("button", "switch", "Pause");
    pause.type = "button";
    pause.addEventListener("click", () => switchReceiver(tr, pause));
    const remove = element("button", "danger delete", "Delete");
    remove.type = "button";
    remove.addEventListener("click", () => deleteReceiver(tr, remove));
    // Replay: what it received since a time comes again (POST .../seek).
    const seek = element("form", "seek");
    const when = element("input");
    when.type = "text";
    when.size = 8;
    when.placeholder = "1h";
    when.setAttribute("aria-label", "Replay from");
    when.title = "a duration ago (1h, 15m) or a time (2026-11-26T23:00:00Z)";
    const replay = element("button", "switch", "Replay");
    replay.type = "submit";
    seek.append(when, " ", replay);
    seek.addEventListener("submit", (event) => {
      event.preventDefault();
      seekReceiver(tr, when, replay);
    });
    tr.cells[9].className = "actions";
    tr.cells[9].append(pause, " ", remove, " ", seek);
    tr.cells[0].append(element("span", "rid"), " ", element("span", "kind"), " ");
    tr.cells[0].append(element("span", "format"), " ");
    tr.cells[0].append(element("span", "url"));
    tr.cells[3].append(element("span", "badge"), element("div", "reason muted"));
    const details = element("details", "failures");
    details.append(element("summary"), element("ol"));
    tr.cells[8].append(element("span", "muted none", "—"), details);
    return tr;
  }

  function updateReceiverRow(tr, receiver, now) {
    const [who, topic, group, state, inFlight, windowSize, success, failures, recent, actions] =
      tr.cells;
    tr.dataset.receiverId = String(receiver.id);
    tr.dataset.state = receiver.state;
    who.querySelector(".rid").textContent = "#" + receiver.id;
    // Left out by servers before consumer groups and pausing; shown only when known.
    const kind = who.querySelector(".kind");
    kind.hidden = !receiver.kind;
    kind.textContent = receiver.kind || "";
    kind.title = RECEIVER_KINDS.get(receiver.kind) || "";
    // Shown only when deliveries are not the default {"body": ...} (mq).
    const format = who.querySelector(".format");
    format.hidden = !receiver.format || receiver.format === "mq";
    format.textContent = receiver.format || "";
    format.title = "its deliveries are CloudEvents 1.0 in HTTP " +
      (receiver.format === "cloudevents-binary" ? "binary mode (ce-* headers)" : "structured mode");
    const url = who.querySelector(".url");
    url.textContent = receiver.url;
    url.title = receiver.url;
    topic.textContent = receiver.topic;
    group.className = receiver.group ? "group" : "group muted";
    group.textContent = receiver.group || "—";
    group.title = receiver.group ? "consumer group: its members share its messages" : "";
    // The state is text from the server: a class name only if it is one styled here.
    const badge = state.querySelector(".badge");
    const known = RECEIVER_STATES.has(receiver.state);
    badge.className = "badge " + (known ? "state-" + receiver.state : "state-unknown");
    badge.textContent = receiver.state;
    badge.title = RECEIVER_STATES.get(receiver.state) || "";
    // Why the broker disabled it; left out by servers before endpoint health.
    const reason = state.querySelector(".reason");
    reason.textContent = receiver.disabled_reason || "";
    reason.hidden = !receiver.disabled_reason;
    setNumber(inFlight, receiver.in_flight);
    // Null until it first answered; left out by servers before adaptive windows.
    setNumber(windowSize, receiver.window ?? "—");
    const last = receiver.last_success_at;
    success.textContent = last === null ? "none yet" : ago(now - last);
    success.title = last === null ? "" : new Date(last * 1000).toLocaleString();
    setNumber(failures, receiver.consecutive_failures);
    renderFailures(recent, receiver.recent_failures, now);
    const pause = actions.querySelector("button.switch");
    const stopped = STOPPED.has(receiver.state);
    if (!pause.dataset.busy) pause.textContent = stopped ? "Resume" : "Pause";
    pause.title = stopped
      ? "Deliver its messages again"
      : "Stop delivering to it; its messages wait until it is resumed";
    const remove = actions.querySelector("button.delete");
    remove.title = "Delete it: its undelivered messages are dropped for it";
  }

  function renderNodes(feed) {
    // Left out by servers before nodes shared a store: nothing to show then.
    const nodes = feed.nodes || [];
    showTable("nodes", nodes.length > 0);
    const rows = $("nodes").tBodies[0];
    const update = (tr, node) => updateNodeRow(tr, node, feed.node);
    syncChildren(rows, nodes, (node) => node.name, buildNodeRow, update);
  }

  function buildNodeRow() {
    const tr = row(6);
    tr.cells[0].append(element("span", "node-name"), " ");
    tr.cells[0].append(element("span", "here", "answering"));
    tr.cells[1].append(element("span", "url"));
    return tr;
  }

  function updateNodeRow(tr, node, answering) {
    const [name, address, uptime, held, inFlight, seen] = tr.cells;
    const here = node.name === answering;
    tr.dataset.node = node.name;
    tr.dataset.answering = String(here);
    name.querySelector(".node-name").textContent = node.name;
    const mark = name.querySelector(".here");
    mark.hidden = !here;
    mark.title = here ? "the node that answered this page's requests" : "";
    const url = address.querySelector(".url");
    url.textContent = node.address || "—";
    url.title = node.address;
    setNumber(uptime, formatDuration(node.uptime_seconds));
    uptime.title = "since " + new Date(node.started_at * 1000).toLocaleString();
    setNumber(held, node.held);
    setNumber(inFlight, node.in_flight);
    const late = node.seen_age_seconds > NODE_LATE_SECONDS;
    seen.className = late ? "late" : "";
    seen.textContent = ago(node.seen_age_seconds);
    seen.title = late ? "its heartbeats are late: it may be stuck or gone" : "";
  }

  function renderFailures(cell, failures, now) {
    const details = cell.querySelector("details");
    cell.querySelector(".none").hidden = failures.length > 0;
    details.hidden = failures.length === 0;
    if (!failures.length) return;
    const latest = failures[0];
    details.querySelector("summary").textContent = `${latest.reason} · ${ago(now - latest.at)}`;
    const items = failures.map((failure) => {
      const status = failure.status === null ? "" : ` · HTTP ${failure.status}`;
      const text =
        `${clock(failure.at)} · attempt ${failure.attempt}${status} · ${failure.reason}` +
        ` · message ${failure.message_id}`;
      return element("li", "", text);
    });
    details.querySelector("ol").replaceChildren(...items);
  }

  function renderDeadLetters(feed, letters) {
    const urls = new Map(feed.receivers.map((receiver) => [receiver.id, receiver.url]));
    const groups = new Map();
    for (const letter of letters) {
      if (!groups.has(letter.receiver_id)) groups.set(letter.receiver_id, []);
      groups.get(letter.receiver_id).push(letter);
    }
    const items = [...groups].map(([id, group]) => ({ id, group, url: urls.get(id) }));
    $("dead-letters-empty").hidden = items.length > 0;
    const all = $("redrive-all");
    if (!all.dataset.busy) all.disabled = !items.some((item) => item.url !== undefined);
    const purge = $("purge-all");
    if (!purge.dataset.busy) purge.disabled = items.length === 0;
    const update = (section, item) => updateLetterGroup(section, item, feed.at);
    syncChildren($("dead-letter-groups"), items, (item) => item.id, buildLetterGroup, update);
  }

  function buildLetterGroup(item) {
    const section = element("section", "dl-group");
    const head = element("div", "dl-head");
    const title = element("h3");
    title.append(element("span", "rid"), " ", element("span", "url"));
    const button = element("button", "redrive", "Redrive");
    button.type = "button";
    button.addEventListener("click", () => redrive(item.id, button));
    const purge = element("button", "danger purge", "Purge");
    purge.type = "button";
    purge.addEventListener("click", () => purgeReceiver(item.id, purge));
    head.append(title, element("span", "count muted"), button, purge);
    const table = element("table", "data letters");
    const header = table.createTHead().insertRow();
    for (const name of ["Message", "Attempts", "Last error", "Dead since", "Body", "Actions"]) {
      header.append(element("th", name === "Attempts" ? "num" : "", name));
    }
    table.createTBody();
    section.append(head, table, element("p", "more muted"));
    return section;
  }

  function updateLetterGroup(section, item, now) {
    const connected = item.url !== undefined;
    section.dataset.receiverId = String(item.id);
    section.querySelector(".rid").textContent = "Receiver #" + item.id;
    const url = section.querySelector(".url");
    url.textContent = connected ? item.url : "disconnected";
    url.title = connected ? item.url : "";
    section.querySelector(".count").textContent = plural(item.group.length, "dead letter");
    const button = section.querySelector("button.redrive");
    if (!button.dataset.busy) button.disabled = !connected;
    const purge = section.querySelector("button.purge");
    if (!purge.dataset.busy) purge.disabled = !connected;
    purge.title = connected
      ? "Drop these dead letters for good"
      : "The receiver has disconnected: Purge all drops its dead letters";
    button.title = connected
      ? "Deliver these again, with a fresh retry budget"
      : "The receiver has disconnected: its dead letters cannot be redriven";
    const shown = item.group.slice(-LETTERS_SHOWN_PER_RECEIVER).reverse(); // newest first
    const update = (tr, letter) => updateLetterRow(tr, letter, now, connected);
    const rows = section.querySelector("tbody");
    syncChildren(rows, shown, (letter) => letter.message_id, buildLetterRow, update);
    const older = item.group.length - shown.length;
    section.querySelector(".more").textContent = older > 0 ? `and ${older} older…` : "";
  }

  function buildLetterRow() {
    const tr = row(6);
    const look = element("button", "link message-link");
    look.type = "button";
    look.title = "Look up this message's journey";
    look.addEventListener("click", () => {
      $("lookup-input").value = tr.dataset.messageId;
      lookUp(tr.dataset.messageId);
    });
    tr.cells[0].append(look);
    tr.cells[5].className = "actions";
    for (const [action, label] of [
      ["redrive", "Redrive"],
      ["drop", "Drop"],
    ]) {
      const button = element("button", action === "drop" ? "danger one-drop" : "one-redrive", label);
      button.type = "button";
      button.addEventListener("click", () => oneDeadLetter(button, action));
      tr.cells[5].append(button, " ");
    }
    return tr;
  }

  function updateLetterRow(tr, letter, now, connected) {
    const [id, attempts, error, dead, body, actions] = tr.cells;
    tr.dataset.receiverId = String(letter.receiver_id);
    tr.dataset.messageId = letter.message_id;
    id.className = "mono";
    id.querySelector(".message-link").textContent = letter.message_id;
    for (const button of actions.querySelectorAll("button")) {
      if (!button.dataset.busy) button.disabled = !connected;
    }
    const redrive = actions.querySelector(".one-redrive");
    redrive.setAttribute("aria-label", "Redrive message " + letter.message_id);
    redrive.title = "Deliver this one again, with a fresh retry budget";
    const drop = actions.querySelector(".one-drop");
    drop.setAttribute("aria-label", "Drop message " + letter.message_id);
    drop.title = "Drop this one for good";
    setNumber(attempts, letter.attempts);
    error.className = "reason";
    error.textContent = letter.last_error || "—";
    error.title = letter.last_error || "";
    dead.textContent = ago(now - letter.dead_at);
    dead.title = new Date(letter.dead_at * 1000).toLocaleString();
    body.className = "body";
    body.textContent = preview(letter.body);
    body.title = letter.body.length > BODY_PREVIEW_CHARS ? letter.body.slice(0, 2000) : "";
  }

  function renderMessage(message) {
    const fields = [
      ["Message", message.id],
      ["Topic", message.topic],
      ["Published", new Date(Date.parse(message.published_at)).toLocaleString()],
      ["Attributes", Object.entries(message.attributes).map(([k, v]) => `${k}=${v}`).join(" ")],
      ["Body", preview(message.body)],
    ];
    const list = $("lookup-fields");
    list.replaceChildren();
    for (const [name, value] of fields) {
      const entry = element("div");
      entry.append(element("dt", "", name), element("dd", "", value || "—"));
      list.append(entry);
    }
    const deliveries = message.deliveries.map(renderDelivery);
    if (!deliveries.length) {
      deliveries.push(element("p", "empty", "No deliveries yet: nothing matched its topic."));
    }
    $("lookup-deliveries").replaceChildren(...deliveries);
    $("lookup-result").hidden = false;
  }

  function renderDelivery(delivery) {
    const section = element("section", "journey");
    section.dataset.state = delivery.state;
    const who =
      delivery.group === null
        ? `Receiver #${delivery.subscription_id}`
        : `Group ${delivery.group}` +
          (delivery.subscription_id === null ? "" : ` (member #${delivery.subscription_id})`);
    const title = element("h3", "", who + " ");
    title.append(element("span", "badge state-" + delivery.state, delivery.state));
    title.append(" " + plural(delivery.attempts, "attempt"));
    section.append(title);
    const history = delivery.history || [];
    if (!history.length) {
      section.append(element("p", "muted", "Not attempted yet."));
      return section;
    }
    const table = element("table", "data attempts");
    const header = table.createTHead().insertRow();
    for (const name of ["Attempt", "Sent", "Took", "Outcome", "Status", "Error"]) {
      header.append(element("th", "", name));
    }
    const body = table.createTBody();
    for (const attempt of history) {
      const tr = row(6);
      tr.dataset.outcome = attempt.outcome;
      const took = attempt.duration_ms === null ? "—" : attempt.duration_ms.toFixed(1) + " ms";
      const cells = [
        String(attempt.attempt),
        new Date(Date.parse(attempt.sent_at)).toLocaleTimeString([], { hour12: false }),
        took,
        attempt.outcome,
        attempt.status === null ? "—" : String(attempt.status),
        attempt.error || "—",
      ];
      cells.forEach((text, i) => {
        tr.cells[i].textContent = text;
      });
      tr.cells[3].className = "outcome-" + attempt.outcome;
      body.append(tr);
    }
    section.append(table);
    return section;
  }

  // -- DOM helpers --------------------------------------------------------------------

  // Make `parent`'s children match `items` in order, reusing the child made for the same
  // key, so open details, focus and a button being clicked survive each redraw.
  function syncChildren(parent, items, keyOf, build, update) {
    const old = new Map();
    for (const child of Array.from(parent.children)) old.set(child.dataset.key, child);
    let previous = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let child = old.get(key);
      if (child) old.delete(key);
      else {
        child = build(item);
        child.dataset.key = key;
      }
      update(child, item);
      const wanted = previous ? previous.nextElementSibling : parent.firstElementChild;
      if (child !== wanted) parent.insertBefore(child, wanted);
      previous = child;
    }
    for (const child of old.values()) child.remove();
  }

  function showTable(id, any) {
    $(id).hidden = !any;
    $(id + "-empty").hidden = any;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (let i = 0; i < cells; i += 1) tr.insertCell();
    return tr;
  }

  function element(tag, className = "", text = "") {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  function svgElement(tag, attributes, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setNumber(cell, value) {
    cell.className = "num";
    cell.textContent = typeof value === "number" ? formatCount(value) : value;
  }

  // -- formatting ---------------------------------------------------------------------

  function niceCeiling(value) {
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
      if (value <= step * magnitude) return step * magnitude;
    }
    return 10 * magnitude;
  }

  function formatCount(value) {
    return Number.isInteger(value) ? value.toLocaleString("en-US") : value.toFixed(1);
  }

  function formatRate(perSecond) {
    if (perSecond === 0) return "0/s";
    return (perSecond < 10 ? perSecond.toFixed(2) : perSecond.toFixed(1)) + "/s";
  }

  function formatDuration(seconds) {
    if (seconds < 60) return Math.floor(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
    return (seconds / 86400).toFixed(1) + " d";
  }

  function ago(seconds) {
    return seconds < 1 ? "just now" : formatDuration(seconds) + " ago";
  }

  function clock(unixSeconds) {
    return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
  }

  function plural(count, noun) {
    return count + " " + noun + (count === 1 ? "" : "s");
  }

  function preview(body) {
    if (body === "") return "(empty)";
    return body.length > BODY_PREVIEW_CHARS ? body.slice(0, BODY_PREVIEW_CHARS) + "…" : body;
  }

  // -- start --------------------------------------------------------------------------

  $("no-script").hidden = true;

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("key-input");
    const key = input.value.trim();
    if (!key) {
      $("key-error").textContent = "Paste an admin key first.";
      return;
    }
    input.value = "";
    $("key-error").textContent = "";
    setKey(key);
    setStatus("static", "Checking the key…");
    poll();
  });

  $("forget-key").addEventListener("click", () => {
    setKey("");
    clearTimeout(state.timer);
    if (keysRequired) askForKey("");
    else poll();
  });

  $("redrive-all").addEventListener("click", (event) => redrive(null, event.currentTarget));
  $("purge-all").addEventListener("click", (event) => purgeAll(event.currentTarget));

  $("lookup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const messageId = $("lookup-input").value.trim();
    if (!messageId) {
      $("lookup-error").textContent = "Paste a message id first (publishing returns it).";
      return;
    }
    lookUp(messageId);
  });

  for (const button of document.querySelectorAll(".range button")) {
    button.addEventListener("click", () => {
      state.windowSeconds = Number(button.dataset.seconds);
      for (const other of document.querySelectorAll(".range button")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      drawThroughput();
    });
  }

  window.addEventListener("resize", drawThroughput);

  $("forget-key").hidden = !state.key;
  if (keysRequired && !state.key) askForKey("");
  else poll();
})();
