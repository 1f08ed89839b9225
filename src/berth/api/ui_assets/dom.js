// A few DOM and formatting helpers. Text always goes in as text (never as HTML).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "testid") el.dataset.testid = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value") el.value = v;
    else if (k === "style") Object.assign(el.style, v); // CSSOM: allowed by the page's CSP
    else if (k === "checked") el.checked = Boolean(v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function badge(status) {
  return h("span", { class: `badge s-${status}`, testid: "status" }, status.replace("_", " "));
}

export function ago(epoch) {
  if (!epoch) return "never";
  const s = Math.max(0, Date.now() / 1000 - epoch);
  if (s < 1) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

// A time that keeps its "x s ago" fresh (see tick() in app.js), with the exact time on hover.
export function when(epoch) {
  const el = h("time", { class: "ago", title: epoch ? clock(epoch, true) : "" }, ago(epoch));
  if (epoch) el.dataset.epoch = String(epoch);
  return el;
}

export function clock(epoch, withDate = false, ms = true) {
  if (!epoch) return "—";
  const d = new Date(epoch * 1000);
  const t = d.toLocaleTimeString([], { hour12: false }) + (ms ? "." + String(d.getMilliseconds()).padStart(3, "0") : "");
  return withDate ? `${d.toLocaleDateString()} ${t}` : t;
}

export function secs(s) {
  if (s === null || s === undefined) return "—";
  if (s < 0.001) return "<1 ms";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function toast(text, kind = "ok") {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = `toast show ${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.className = "toast"), 4000);
}

// The text parts of an A2A message, task or JSON-RPC request/response, v0.3 or v1.0.
export function texts(doc) {
  const out = [];
  const walk = (v, depth) => {
    if (!v || typeof v !== "object" || depth > 8) return;
    if (Array.isArray(v)) return v.forEach((x) => walk(x, depth + 1));
    if (Array.isArray(v.parts)) {
      for (const p of v.parts) if (p && typeof p.text === "string") out.push(p.text);
    }
    for (const [k, x] of Object.entries(v)) if (k !== "parts" && k !== "history") walk(x, depth + 1);
  };
  walk(doc, 0);
  return out.join("\n");
}

// At most one call per `ms` however many come (the last one is never lost): a busy event
// stream must not keep a view from refreshing, nor make it refresh for every event.
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}
