// disco dashboard: the overview polls /v1/tenants; a tenant page follows /v1/tenants/<t>/events (SSE).
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = (extra) => { const p = new URLSearchParams(extra || {}); if (token) p.set("token", token); const s = p.toString(); return s ? "?" + s : ""; };
const $ = (sel) => document.querySelector(sel);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };

let source = null, timer = null, ageTimer = null;
const state = { tenant: null, instances: new Map() };  // key "svc/id" -> {svc, inst, seenAt}

function stop() {
  if (source) { source.close(); source = null; }
  if (timer) { clearInterval(timer); timer = null; }
  if (ageTimer) { clearInterval(ageTimer); ageTimer = null; }
  $("#conn").classList.remove("live");
}

function fmtAge(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return Math.floor(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

async function loadTenants() {
  const r = await fetch("/v1/tenants" + q());
  if (!r.ok) return [];
  return (await r.json()).tenants;
}

function renderNav(tenants) {
  const nav = $("#tenants-nav"); nav.textContent = "";
  for (const t of tenants) {
    const a = el("a", state.tenant === t.name ? "active" : "", t.name);
    a.href = "#/t/" + encodeURIComponent(t.name);
    nav.appendChild(a);
  }
}

async function showOverview() {
  stop(); state.tenant = null;
  $("#tenant").hidden = true; $("#overview").hidden = false;
  const refresh = async () => {
    const tenants = await loadTenants();
    renderNav(tenants);
    const body = $("#overview-table tbody"); body.textContent = "";
    for (const t of tenants) {
      const tr = el("tr"); tr.dataset.tenant = t.name;
      const td = el("td"); const a = el("a", "tenant-link", t.name); a.href = "#/t/" + encodeURIComponent(t.name); td.appendChild(a); tr.appendChild(td);
      tr.appendChild(el("td", "num svcs", String(t.services)));
      tr.appendChild(el("td", "num insts", String(t.instances)));
      tr.appendChild(el("td", "num rate", t.events_per_s.toFixed(1)));
      tr.appendChild(el("td", "num", String(t.revision)));
      body.appendChild(tr);
    }
    $("#conn").classList.add("live");
  };
  await refresh();
  timer = setInterval(refresh, 1000);
}

function rowId(svc, id) { return "inst-" + svc + "-" + id; }

function renderRow(key, fresh) {
  const { svc, inst, seenAt } = state.instances.get(key);
  let tr = document.getElementById(rowId(svc, inst.id));
  const created = !tr;
  if (created) { tr = el("tr"); tr.id = rowId(svc, inst.id); }
  tr.textContent = ""; tr.dataset.service = svc; tr.dataset.instance = inst.id; tr.dataset.seenAt = seenAt;
  tr.appendChild(el("td", "svc", svc));
  tr.appendChild(el("td", "mono", inst.id));
  tr.appendChild(el("td", "mono", inst.address + ":" + inst.port));
  tr.appendChild(el("td", "", inst.zone || "–"));
  const tags = el("td"); for (const t of inst.tags) tags.appendChild(el("span", "tag", t)); tr.appendChild(tags);
  const st = el("td"); st.appendChild(el("span", "status " + inst.status, inst.status)); tr.appendChild(st);
  tr.appendChild(el("td", "num age", fmtAge((Date.now() - seenAt) / 1000)));
  if (created) {
    // keep rows sorted by service, then instance id
    const body = $("#instances tbody");
    const before = [...body.children].find((r) => (r.dataset.service + "/" + r.dataset.instance) > (svc + "/" + inst.id));
    body.insertBefore(tr, before || null);
    if (fresh) tr.classList.add("new");
  }
}

function summary() {
  const svcs = new Set([...state.instances.values()].map((v) => v.svc));
  $("#tenant-summary").textContent = svcs.size + " services · " + state.instances.size + " instances";
  $("#empty").hidden = state.instances.size > 0;
  applyFilter();
}

function applyFilter() {
  const f = $("#filter").value.trim().toLowerCase();
  for (const tr of $("#instances tbody").children) tr.hidden = f !== "" && !tr.textContent.toLowerCase().includes(f);
}

function logChange(ch) {
  const li = el("li");
  const b = el("b", ch.type, ch.type); li.appendChild(b);
  li.appendChild(document.createTextNode(" " + ch.service + "/" + ch.instance.id + " (" + ch.reason + ") rev " + ch.revision));
  const list = $("#changes"); list.insertBefore(li, list.firstChild);
  while (list.children.length > 50) list.removeChild(list.lastChild);
}

function showTenant(name) {
  stop(); state.tenant = name; state.instances.clear();
  $("#overview").hidden = true; $("#tenant").hidden = false;
  $("#tenant-name").textContent = name; $("#instances tbody").textContent = ""; $("#changes").textContent = "";
  loadTenants().then(renderNav);
  source = new EventSource("/v1/tenants/" + encodeURIComponent(name) + "/events" + q());
  source.onopen = () => $("#conn").classList.add("live");
  source.onerror = () => $("#conn").classList.remove("live");
  source.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    state.instances.clear(); $("#instances tbody").textContent = "";
    const now = Date.now();
    for (const [svc, insts] of Object.entries(snap.services)) {
      for (const inst of insts) {
        const key = svc + "/" + inst.id;
        state.instances.set(key, { svc, inst, seenAt: now - 1000 * (inst.age || 0) });
        renderRow(key, false);
      }
    }
    summary();
  });
  source.addEventListener("change", (e) => {
    const ch = JSON.parse(e.data);
    const key = ch.service + "/" + ch.instance.id;
    if (ch.type === "removed") {
      state.instances.delete(key);
      const tr = document.getElementById(rowId(ch.service, ch.instance.id));
      if (tr) tr.remove();
    } else {
      const prev = state.instances.get(key);
      const seenAt = prev ? prev.seenAt : Date.now() - 1000 * (ch.instance.age || 0);
      state.instances.set(key, { svc: ch.service, inst: ch.instance, seenAt });
      renderRow(key, !prev);
    }
    logChange(ch);
    summary();
  });
  ageTimer = setInterval(() => {
    for (const tr of $("#instances tbody").children) {
      tr.querySelector(".age").textContent = fmtAge((Date.now() - Number(tr.dataset.seenAt)) / 1000);
    }
  }, 1000);
}

function route() {
  const m = location.hash.match(/^#\/t\/([^/]+)$/);
  if (m) showTenant(decodeURIComponent(m[1])); else showOverview();
}

$("#filter").addEventListener("input", applyFilter);
window.addEventListener("hashchange", route);
route();
