// The syncline dashboard: pipelines with live throughput and lag, the dead-letter queue,
// parked conflicts and the trace search, all through the management API (docs/api.md).

import { ApiError, call, pipelinePath, token } from "./api.js";
import { Series, createChart, drawChart } from "./chart.js";
import { $, fmtEpoch, fmtKey, fmtNumber, fmtRate, fmtTime, h, replaceChildren } from "./dom.js";

const POLL_MS = 1500;
const WINDOW_MS = 3 * 60 * 1000; // what the charts keep
const REPLAY_WAIT_S = 15; // a replay waits this long for the pipeline's outcome
const ROLES = ["viewer", "operator", "admin"];
const ACTIVE = new Set(["running", "snapshot", "starting", "degraded", "standby"]);

const state = {
  me: null, // {name, role, open_access}
  session: 0, // bumped at each sign-in and sign-out
  cards: new Map(), // pipeline name -> card
  selected: null,
  timer: null,
  ticking: false,
  again: false,
  signature: { dlq: "", conflicts: "" },
  shown: new Map(), // dead-letter id -> its detail, while expanded
};

// ---------------------------------------------------------------- messages

let bannerTimer = null;

function banner(kind, text, detail) {
  const el = $("banner");
  el.className = `banner banner-${kind}`;
  el.dataset.kind = kind;
  replaceChildren($("banner-text"), h("strong", { text }), detail ? h("span", { class: "detail", text: detail }) : null);
  el.hidden = false;
  clearTimeout(bannerTimer);
  if (kind === "ok") bannerTimer = setTimeout(() => (el.hidden = true), 8000);
}

function hideBanner() {
  $("banner").hidden = true;
}

function canDo(role) {
  return state.me && ROLES.indexOf(state.me.role) >= ROLES.indexOf(role);
}

// One place that turns an API error into what the user reads.
function reportError(err, what) {
  if (!(err instanceof ApiError)) {
    banner("error", `${what} failed: ${err}`);
    return;
  }
  if (err.status === 401) {
    signOut(`The API refused the token (${err.message}). Sign in again.`);
    return;
  }
  if (err.status === 403) {
    const needed = /needs role (\w+)/.exec(err.message)?.[1];
    const text =
      needed && state.me
        ? `Not allowed: your token is ${state.me.role}: ${what} needs ${needed}.`
        : `Not allowed: ${what}: ${err.message}`;
    banner("refused", text, err.message);
    return;
  }
  const status = err.status ? ` (HTTP ${err.status})` : "";
  banner("error", `${what} failed${status}: ${err.message}`);
}

async function act(what, method, path, body, describe) {
  try {
    const result = await call(method, path, body);
    banner("ok", describe ? describe(result) : `${what}: done`);
  } catch (err) {
    reportError(err, what);
  }
  refreshNow();
}

function operatorButton(label, onclick, extra = {}) {
  const button = h("button", { type: "button", "data-role": "operator", ...extra, onclick }, label);
  markRole(button);
  return button;
}

function markRole(button) {
  const needed = button.dataset.role;
  if (!needed || !state.me) return;
  const short = !canDo(needed);
  button.classList.toggle("needs-role", short);
  button.title = short ? `needs an ${needed} token; yours is ${state.me.role}` : "";
}

// ---------------------------------------------------------------- sign in

async function signIn() {
  try {
    state.me = await call("GET", "/whoami");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      const tried = token.get();
      token.clear();
      showLogin(tried ? `That token was refused: ${err.message}` : "");
      return;
    }
    showLogin(`The API did not answer: ${err.message}`);
    return;
  }
  state.session += 1;
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("who").textContent = state.me.open_access
    ? "open access (the API has no tokens)"
    : `${state.me.name} · ${state.me.role}`;
  $("signout").hidden = state.me.open_access;
  document.querySelectorAll("button[data-role]").forEach(markRole);
  refreshNow();
}

function showLogin(message) {
  stopPolling();
  state.me = null;
  $("dashboard").hidden = true;
  $("login").hidden = false;
  $("who").textContent = "";
  $("signout").hidden = true;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function signOut(message) {
  state.session += 1;
  token.clear();
  for (const card of state.cards.values()) card.el.remove();
  state.cards.clear();
  state.selected = null;
  $("detail").hidden = true;
  hideBanner();
  showLogin(message);
}

// ---------------------------------------------------------------- polling

function stopPolling() {
  clearTimeout(state.timer);
  state.timer = null;
}

function refreshNow() {
  if (!state.me) return;
  if (state.ticking) {
    state.again = true;
    return;
  }
  stopPolling();
  tick();
}

// Each sign-in starts a session; answers that arrive for an older one (a poll in flight
// while the user signed out) are dropped, and no further call goes out for it.
async function tick() {
  const session = state.session;
  state.ticking = true;
  try {
    await poll(session);
  } catch (err) {
    if (session === state.session) pollFailed(err);
  } finally {
    state.ticking = false;
  }
  if (!state.me) return;
  if (state.again || session !== state.session) {
    state.again = false;
    tick();
  } else {
    state.timer = setTimeout(tick, POLL_MS);
  }
}

async function poll(session) {
  const list = await call("GET", "/pipelines");
  if (session !== state.session) return;
  syncCards(list);
  const now = performance.now();
  await Promise.all(
    list.map((p) =>
      call("GET", pipelinePath(p.name, "/status")).then(
        (status) => session === state.session && updateCard(state.cards.get(p.name), status, now),
        (err) => session === state.session && statusFailed(state.cards.get(p.name), err),
      ),
    ),
  );
  if (session !== state.session) return;
  if (state.selected) await refreshDetail(state.selected);
  $("updated").textContent = `updated ${fmtTime(new Date())}`;
  if ($("banner").dataset.kind === "offline") hideBanner();
}

function pollFailed(err) {
  if (err instanceof ApiError && err.status === 401) {
    reportError(err, "reading the pipelines");
    return;
  }
  banner("offline", `Cannot read the pipelines: ${err.message}`, "retrying…");
}

// ---------------------------------------------------------------- pipeline cards

function syncCards(list) {
  const names = new Set(list.map((p) => p.name));
  for (const [name, card] of state.cards) {
    if (!names.has(name)) {
      card.el.remove();
      state.cards.delete(name);
      if (state.selected === name) select(null);
    }
  }
  for (const p of list) {
    let card = state.cards.get(p.name);
    if (!card) {
      card = makeCard(p.name);
      state.cards.set(p.name, card);
      $("pipelines").append(card.el);
    }
    card.kinds.textContent = `${p.source} → ${p.sink}`;
  }
  $("no-pipelines").hidden = list.length > 0;
  if (!state.selected && list.length) select(list[0].name);
}

function stat(label) {
  const value = h("dd", { text: "–" });
  return { el: h("div", { class: "stat" }, h("dt", { text: label }), value), value };
}

function makeCard(name) {
  const path = (rest) => pipelinePath(name, rest);
  const badge = h("span", { class: "badge", "data-state": "" });
  const kinds = h("span", { class: "kinds muted" });
  const error = h("p", { class: "perror", hidden: true });
  const stats = {
    rate: stat("applied/s"),
    lag: stat("lag (events)"),
    latency: stat("latency p50/p99 ms"),
    applied: stat("applied"),
    dlq: stat("dead letters"),
  };
  const position = h("span", { class: "mono" });
  const throughputChart = createChart("throughput (applied events/s)", "throughput");
  const lagChart = createChart("lag (events not applied)", "lag");
  const pause = operatorButton("Pause", () =>
    act(`pause ${name}`, "POST", path("/pause"), undefined, (r) => `${name}: ${r.message}`),
  );
  const resume = operatorButton("Resume", () =>
    act(`resume ${name}`, "POST", path("/resume"), undefined, (r) => `${name}: ${r.message}`),
  );
  const restart = operatorButton("Restart", () =>
    act(`restart ${name}`, "POST", path("/restart"), undefined, (r) => `${name}: ${r.message}`),
  );
  const title = h("button", { type: "button", class: "name linklike", onclick: () => select(name) }, name);
  const el = h(
    "article",
    { class: "card", "data-pipeline": name },
    h("header", { class: "card-head" }, title, badge, h("span", { class: "spacer" }), kinds),
    error,
    h("dl", { class: "stats" }, Object.values(stats).map((s) => s.el)),
    h("p", { class: "position" }, h("span", { class: "muted", text: "source position " }), position),
    h("div", { class: "charts" }, throughputChart.el, lagChart.el),
    h(
      "div",
      { class: "card-actions" },
      pause,
      resume,
      restart,
      h("span", { class: "spacer" }),
      h("button", { type: "button", class: "quiet", onclick: () => select(name) }, "Details"),
    ),
  );
  return {
    el,
    badge,
    kinds,
    error,
    stats,
    position,
    buttons: { pause, resume },
    charts: { throughput: throughputChart, lag: lagChart },
    series: { throughput: new Series(WINDOW_MS), lag: new Series(WINDOW_MS) },
    last: null, // {applied, at}: the previous poll, for the rate
  };
}

function setBadge(badge, text) {
  badge.textContent = text;
  badge.dataset.state = text;
  badge.className = `badge state-${text}`;
}

function positionText(position) {
  const entries = Object.entries(position || {});
  if (!entries.length) return "not yet known";
  return entries.map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
}

function updateCard(card, s, now) {
  if (!card) return;
  setBadge(card.badge, s.state);
  card.error.hidden = !s.error;
  card.error.textContent = s.error || "";
  let rate = null;
  if (card.last && s.applied >= card.last.applied && now > card.last.at) {
    rate = ((s.applied - card.last.applied) * 1000) / (now - card.last.at);
  }
  card.last = { applied: s.applied, at: now };
  if (card.series.throughput.points.length || rate !== null) card.series.throughput.push(now, rate);
  const lag = s.transport_lag ? s.transport_lag.total : null;
  card.series.lag.push(now, lag);
  drawChart(card.charts.throughput, card.series.throughput, now);
  drawChart(card.charts.lag, card.series.lag, now);

  card.stats.rate.value.textContent = fmtRate(rate);
  card.stats.lag.value.textContent = lag === null ? "–" : fmtNumber(lag);
  const latency = s.apply_latency;
  card.stats.latency.value.textContent = latency
    ? `${fmtNumber(latency.p50_ms, 1)} / ${fmtNumber(latency.p99_ms, 1)}`
    : "–";
  card.stats.applied.value.textContent = fmtNumber(s.applied);
  const open = Object.entries(s.dlq?.entries || {})
    .filter(([status]) => status !== "replayed")
    .reduce((sum, [, n]) => sum + n, 0);
  card.stats.dlq.value.textContent = fmtNumber(open);
  card.stats.dlq.el.classList.toggle("alert", open > 0);
  card.position.textContent = positionText(s.source_position);
  card.buttons.pause.disabled = s.state === "paused";
  card.buttons.resume.disabled = ACTIVE.has(s.state) && s.state !== "degraded";
}

function statusFailed(card, err) {
  if (!card) return;
  setBadge(card.badge, "unknown");
  card.error.hidden = false;
  card.error.textContent = `status: ${err.message}`;
}

// ---------------------------------------------------------------- detail: DLQ, conflicts, trace

async function select(name) {
  state.selected = name;
  state.signature = { dlq: "", conflicts: "" };
  state.shown.clear();
  for (const [n, card] of state.cards) card.el.classList.toggle("selected", n === name);
  $("detail").hidden = !name;
  replaceChildren($("trace-results"));
  if (!name) return;
  $("detail-name").textContent = name;
  refreshDetail(name);
  try {
    const info = await call("GET", pipelinePath(name));
    const tables = info.config?.source?.tables || [];
    replaceChildren($("trace-tables"), tables.map((t) => h("option", { value: t })));
    if (!$("trace-table").value && tables.length) $("trace-table").value = tables[0];
  } catch {
    // the table suggestions are a convenience; the status poll reports errors
  }
}

async function refreshDetail(name) {
  const session = state.session;
  const [dlq, conflicts] = await Promise.all([
    call("GET", pipelinePath(name, "/dlq")).catch((err) => err),
    call("GET", pipelinePath(name, "/conflicts")).catch((err) => err),
  ]);
  if (state.selected !== name || session !== state.session) return;
  renderIfChanged("dlq", dlq, () => renderDlq(name, dlq));
  renderIfChanged("conflicts", conflicts, () => renderConflicts(name, conflicts));
}

function renderIfChanged(what, data, render) {
  const signature = data instanceof Error ? `error:${data.message}` : JSON.stringify(data);
  if (signature === state.signature[what]) return;
  state.signature[what] = signature;
  render();
}

function note(text, cls = "muted") {
  return h("p", { class: `${cls} empty`, text });
}

function summarizeReplay(r) {
  if (!r.queued.length) return "Nothing to replay.";
  const by = {};
  for (const e of r.entries) by[e.status] = (by[e.status] || 0) + 1;
  const counts = Object.entries(by)
    .map(([status, n]) => `${n} ${status}`)
    .join(", ");
  const failed = r.entries.find((e) => e.status === "dead");
  let text = `Replay of ${r.queued.length} ${r.queued.length === 1 ? "entry" : "entries"}: ${counts}.`;
  if (failed) text += ` Still failing: ${failed.error}`;
  if (!r.worker_running) text += " The pipeline is not running: they are applied when it runs.";
  return text;
}

function replay(name, body, what) {
  act(what, "POST", pipelinePath(name, "/dlq/replay"), { ...body, wait: REPLAY_WAIT_S }, summarizeReplay);
}

function purge(name, body, what) {
  if (!window.confirm(`${what}? The events are dropped without being applied.`)) return;
  act(what, "POST", pipelinePath(name, "/dlq/purge"), body, (r) => {
    const released = r.released.length ? `; ${r.released.length} held events released` : "";
    return `Purged ${r.deleted} ${r.deleted === 1 ? "entry" : "entries"}${released}.`;
  });
}

function renderDlq(name, entries) {
  const box = $("dlq");
  if (entries instanceof Error) {
    if (entries.status === 401) return reportError(entries, "reading the dead-letter queue");
    replaceChildren(box, note(entries.message, "error"));
    return;
  }
  $("dlq-replay-all").onclick = () => replay(name, { all: true }, "replay all dead letters");
  $("dlq-purge-all").onclick = () => purge(name, { all: true }, "purge all dead letters");
  if (!entries.length) {
    replaceChildren(box, note("No dead letters. Every event reached the target."));
    return;
  }
  const rows = [];
  for (const e of entries) {
    const actions = h("td", { class: "actions" });
    if (e.status === "dead") {
      actions.append(operatorButton("Replay", () => replay(name, { ids: [e.id] }, `replay entry ${e.id}`)));
    }
    actions.append(
      operatorButton("Purge", () => purge(name, { ids: [e.id] }, `purge entry ${e.id}`), { class: "danger" }),
      h("button", { type: "button", class: "quiet", onclick: () => toggleEntry(name, e.id) }, state.shown.has(e.id) ? "Hide" : "Event"),
    );
    rows.push(
      h(
        "tr",
        { "data-id": e.id, "data-status": e.status },
        h("td", { class: "num", text: e.id }),
        h("td", { text: e.table }),
        h("td", { class: "mono", text: fmtKey(e.key) }),
        h("td", {}, h("span", { class: `badge state-${e.status}`, text: e.status })),
        h("td", { class: "num", text: e.attempts }),
        h(
          "td",
          { class: "err" },
          e.blocked_by ? `held behind entry ${e.blocked_by}` : e.error || "",
        ),
        h("td", { class: "when", text: fmtEpoch(e.last_failed_at) }),
        actions,
      ),
    );
    if (state.shown.has(e.id)) {
      rows.push(h("tr", { class: "expanded" }, h("td", { colspan: 8 }, h("pre", { text: JSON.stringify(state.shown.get(e.id), null, 2) }))));
    }
  }
  replaceChildren(
    box,
    h(
      "table",
      { class: "grid-table", id: "dlq-table" },
      h("thead", {}, h("tr", {}, ["id", "table", "key", "status", "attempts", "error", "last failed", ""].map((t) => h("th", { text: t })))),
      h("tbody", {}, rows),
    ),
  );
}

async function toggleEntry(name, id) {
  if (state.shown.has(id)) {
    state.shown.delete(id);
  } else {
    try {
      const detail = await call("GET", pipelinePath(name, `/dlq/${id}`));
      state.shown.set(id, detail.event);
    } catch (err) {
      reportError(err, `reading entry ${id}`);
      return;
    }
  }
  state.signature.dlq = "";
  refreshDetail(name);
}

function renderConflicts(name, conflicts) {
  const box = $("conflicts");
  if (conflicts instanceof Error) {
    if (conflicts.status === 401) return reportError(conflicts, "reading the conflicts");
    replaceChildren(box, note(conflicts.message, "error"));
    return;
  }
  if (!conflicts.length) {
    replaceChildren(box, note("No parked conflicts (only conflict strategy manual parks them)."));
    return;
  }
  const resolve = (c, use) =>
    act(`resolve conflict ${c.id}`, "POST", pipelinePath(name, `/conflicts/${c.id}/resolve`), { use }, (r) =>
      `Conflict ${r.id} resolved with the ${r.use} row (${r.resolved.length} settled).`,
    );
  replaceChildren(
    box,
    h(
      "table",
      { class: "grid-table", id: "conflicts-table" },
      h("thead", {}, h("tr", {}, ["id", "table", "key", "op", "detected", ""].map((t) => h("th", { text: t })))),
      h(
        "tbody",
        {},
        conflicts.map((c) =>
          h(
            "tr",
            { "data-id": c.id },
            h("td", { class: "num", text: c.id }),
            h("td", { text: c.table }),
            h("td", { class: "mono", text: fmtKey(c.key) }),
            h("td", { text: c.op }),
            h("td", { class: "when", text: c.detected_at }),
            h(
              "td",
              { class: "actions" },
              operatorButton("Apply incoming", () => resolve(c, "incoming")),
              operatorButton("Keep current", () => resolve(c, "current")),
            ),
          ),
        ),
      ),
    ),
  );
}

async function searchTrace(event) {
  event.preventDefault();
  const name = state.selected;
  const box = $("trace-results");
  if (!name) return;
  const params = new URLSearchParams({
    table: $("trace-table").value.trim(),
    key: $("trace-key").value.trim(),
    limit: $("trace-limit").value || "10",
  });
  replaceChildren(box, note("Searching…"));
  let records;
  try {
    records = await call("GET", pipelinePath(name, `/trace?${params}`));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return reportError(err, "trace");
    replaceChildren(box, note(err.message, "error"));
    return;
  }
  if (!records.length) {
    replaceChildren(box, note(`No recorded changes of ${params.get("table")} ${params.get("key")} (within the monitoring retention).`));
    return;
  }
  replaceChildren(box, records.map(traceRecord));
}

function traceRecord(r) {
  const first = r.stages.length ? r.stages[0].at_us : 0;
  return h(
    "div",
    { class: "trace-record", "data-status": r.status },
    h(
      "p",
      { class: "trace-head" },
      h("span", { class: `badge state-${r.status}`, text: r.status }),
      h("span", { class: "mono", text: ` ${r.table} ${fmtKey(r.key)} ` }),
      h("span", { class: "muted", text: `op ${r.op || "?"} · position ${r.position} · id ${r.correlation_id || "–"}` }),
    ),
    r.error && !r.stages.some((s) => s.detail && r.error.includes(s.detail))
      ? h("p", { class: "error", text: r.error })
      : null,
    h(
      "ol",
      { class: "stages" },
      r.stages.map((s) =>
        h(
          "li",
          { class: "stage", "data-stage": s.stage },
          h("span", { class: "stage-name", text: s.stage }),
          h("span", { class: "mono", text: s.at.replace("T", " ").replace("+00:00", "Z") }),
          h("span", { class: "delta", text: `+${fmtNumber((s.at_us - first) / 1000, 1)} ms` }),
          h("span", { class: "muted", text: s.detail }),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------- start

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  token.set(value);
  $("token").value = "";
  signIn();
});
$("signout").addEventListener("click", () => signOut(""));
$("banner-close").addEventListener("click", hideBanner);
$("trace-form").addEventListener("submit", searchTrace);
signIn();
