// The status page: polls GET /v1/cluster every second and redraws. Plain DOM, no framework;
// every value goes in as text (never as HTML), so a model or error string cannot inject markup.
"use strict";

const POLL_MS = 1000;
const TIMEOUT_MS = 5000;
const KEY_STORE = "sllm.apiKey";

// ?key=... is taken once into localStorage, then dropped from the address bar.
(function takeKeyFromUrl() {
  const url = new URL(window.location.href);
  const key = url.searchParams.get("key");
  if (key !== null) {
    localStorage.setItem(KEY_STORE, key);
    url.searchParams.delete("key");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) {
    const rest = Math.round(s % 60);
    return rest ? `${Math.floor(s / 60)} m ${rest} s` : `${Math.floor(s / 60)} m`;
  }
  return `${(s / 3600).toFixed(1)} h`;
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function badge(status) {
  return el("span", { class: `badge ${status}` }, status);
}

function rows(tbody, list, columns, makeRow) {
  tbody.replaceChildren();
  if (list.length === 0) {
    tbody.append(el("tr", {}, el("td", { class: "empty", colspan: columns }, "none")));
    return;
  }
  for (const item of list) tbody.append(makeRow(item));
}

function renderSummary(c) {
  const workers = c.nodes.flatMap((n) => n.workers);
  const instances = workers.flatMap((w) => w.instances);
  const stats = [
    ["Nodes", c.nodes.length],
    ["Workers", `${workers.filter((w) => w.status !== "down").length} / ${workers.length}`],
    ["Ready instances", instances.filter((i) => i.status === "ready").length],
    ["Loading", c.cold_starts.length],
    ["In flight", c.deployments.reduce((a, d) => a + d.in_flight, 0)],
    ["Tokens/s", c.deployments.reduce((a, d) => a + d.tokens_per_s, 0).toFixed(1)],
  ];
  document.getElementById("summary").replaceChildren(
    ...stats.map(([label, value]) =>
      el("div", { class: "stat" }, el("div", { class: "value" }, value), el("div", { class: "label" }, label))),
  );
}

function renderDeployments(c) {
  document.getElementById("deployments-count").textContent = `${c.deployments.length}`;
  rows(document.querySelector("#deployments tbody"), c.deployments, 11, (d) => el(
    "tr", { "data-deployment": d.name },
    el("td", {}, el("strong", {}, d.name)),
    el("td", { title: d.error || "" }, badge(d.status)),
    el("td", { class: "num", "data-field": "instances" }, `${d.ready_instances} ready / ${d.instances}`),
    el("td", { class: "num" }, `${d.min_instances} / ${d.max_instances}`),
    el("td", { class: "num" }, seconds(d.keep_alive_s)),
    el("td", { class: "num" }, d.target_concurrency),
    el("td", { class: "num", "data-field": "in_flight" }, d.in_flight),
    el("td", { class: "num", "data-field": "queued" }, d.queued),
    el("td", { class: "num", "data-field": "requests" }, d.requests),
    el("td", { class: "num", "data-field": "tokens_per_s" }, d.tokens_per_s.toFixed(1)),
    el("td", { class: "truncate mono", title: d.checkpoint_uri }, d.checkpoint_uri),
  ));
}

function renderColdStarts(c) {
  document.getElementById("cold-count").textContent = `${c.cold_starts.length}`;
  rows(document.querySelector("#cold-starts tbody"), c.cold_starts, 6, (s) => el(
    "tr", { "data-instance-id": s.instance_id },
    el("td", {}, el("strong", {}, s.model)),
    el("td", { class: "mono" }, s.instance_id),
    el("td", { class: "mono" }, s.worker_id),
    el("td", { class: "mono" }, s.node_id),
    el("td", {}, s.phase ? badge(s.phase) : el("span", { class: "muted" }, "placing")),
    el("td", { class: "num" }, seconds(s.elapsed_s)),
  ));
}

function renderTier(t) {
  const used = t.used_bytes;
  const cap = t.capacity_bytes;
  const share = cap ? Math.min(100, (100 * used) / cap) : null;
  const bw = t.bandwidth_bytes_per_s ? ` · ${bytes(t.bandwidth_bytes_per_s)}/s` : "";
  return el("div", { class: `tier ${t.tier}`, "data-tier": t.tier },
    el("div", { class: "tier-head" },
      el("span", { class: "tier-name" }, t.tier),
      el("span", { class: "muted" }, cap ? `${bytes(used)} / ${bytes(cap)}${bw}` : `${bytes(used)} used${bw}`)),
    share === null
      ? el("div", { class: "bar unknown", title: "capacity not recorded in the cluster state" })
      : el("div", { class: "bar", title: `${share.toFixed(1)}% used` }, el("span", { style: `width: ${share}%` })),
    el("ul", {}, t.models.length === 0
      ? el("li", { class: "muted" }, "empty")
      : t.models.map((m) => el("li", {}, el("span", {}, m.model), el("span", { class: "muted" }, bytes(m.bytes))))),
  );
}

function renderNode(n) {
  const instanceRows = [];
  for (const w of n.workers) {
    const list = w.instances.length ? w.instances : [null];
    list.forEach((i, k) => instanceRows.push(el(
      "tr", i ? { "data-instance-id": i.instance_id, "data-model": i.model, "data-status": i.status } : {},
      el("td", { class: "mono" }, k === 0 ? w.worker_id : ""),
      el("td", { class: "mono" }, k === 0 ? w.device : ""),
      el("td", {}, k === 0 ? badge(w.status) : ""),
      el("td", {}, i ? el("strong", {}, i.model) : el("span", { class: "muted" }, "–")),
      el("td", { title: i && i.error ? i.error : "" }, i ? badge(i.status) : ""),
      el("td", {}, i && i.source_tier ? i.source_tier : ""),
      el("td", { class: "num" }, i ? i.in_flight : ""),
      el("td", { class: "num" }, i ? i.tokens_per_s.toFixed(1) : ""),
    )));
  }
  return el("section", { class: "card node", "data-node": n.node_id },
    el("div", { class: "card-head" },
      el("h3", {}, n.node_id),
      el("span", { class: "muted" }, `${n.workers.length} worker${n.workers.length === 1 ? "" : "s"}`),
      n.registered ? null : badge("unregistered")),
    el("div", { class: "tiers" }, n.tiers.map(renderTier)),
    el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, ["Worker", "Device", "State", "Model", "Status", "From", "In flight", "Tokens/s"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, instanceRows.length ? instanceRows : el("tr", {}, el("td", { class: "empty", colspan: 8 }, "no workers"))))),
  );
}

function renderEvents(c) {
  const list = document.getElementById("events");
  list.replaceChildren(...(c.events.length === 0
    ? [el("li", { class: "muted" }, "no events since this router started")]
    : c.events.map((e) => el("li", {},
      el("span", { class: "muted mono" }, clock(e.time)),
      el("span", { class: "kind mono" }, e.kind),
      el("span", {}, e.summary)))));
}

function render(c) {
  renderSummary(c);
  renderDeployments(c);
  renderColdStarts(c);
  document.getElementById("nodes").replaceChildren(...c.nodes.map(renderNode));
  renderEvents(c);
  document.getElementById("router-id").textContent = c.router_id;
}

function setLive(state, text) {
  document.getElementById("live-dot").className = `dot dot-${state}`;
  document.getElementById("live-text").textContent = text;
}

function showBanner(text) {
  const banner = document.getElementById("banner");
  banner.hidden = text === null;
  banner.textContent = text || "";
}

async function poll() {
  const key = localStorage.getItem(KEY_STORE);
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  try {
    const response = await fetch("/v1/cluster", {
      headers: key ? { Authorization: `Bearer ${key}` } : {},
      signal: controller.signal,
      cache: "no-store",
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
      if (response.status === 401 || response.status === 403) {
        showBanner(`The router refused the key (${response.status}): ${message}. Enter an admin key above.`);
        document.getElementById("key-input").focus();
      } else {
        showBanner(`GET /v1/cluster failed (${response.status}): ${message}`);
      }
      setLive("bad", "error");
      return;
    }
    showBanner(null);
    render(body);
    setLive("ok", `live · ${clock(body.time)}`);
  } catch (err) {
    setLive("bad", "router unreachable");
    showBanner(`Cannot reach the router: ${err && err.name === "AbortError" ? "timed out" : err}`);
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  if (input.value) localStorage.setItem(KEY_STORE, input.value);
  else localStorage.removeItem(KEY_STORE);
  input.value = "";
  input.placeholder = localStorage.getItem(KEY_STORE) ? "key saved" : "SLLM_ADMIN_KEYS…";
});
if (localStorage.getItem(KEY_STORE)) document.getElementById("key-input").placeholder = "key saved";

poll();
