// The dashboard: a hash router over three views, one event stream feeding the view shown.
import { api, follow, signOut } from "./api.js";
import { ago, throttle } from "./dom.js";
import { dead } from "./dead.js";
import { workspace } from "./workspace.js";
import { workspaces } from "./workspaces.js";

const view = document.getElementById("view");
let current = null;

function route() {
  const parts = window.location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "ws" && parts[1]) return workspace(parts[1], parts[2] || "deliveries");
  if (parts[0] === "dead") return dead();
  return workspaces();
}

function show() {
  if (current && current.unmount) current.unmount();
  current = route();
  document.title = `${current.title} · berth`;
  const page = current.title === "Dead letters" ? "dead" : "workspaces";
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === page);
  current.mount(view);
}

const deadCount = async () => {
  try {
    const n = (await api("/v1/dead-letters?limit=1000")).deliveries.length;
    const el = document.getElementById("dead-count");
    el.textContent = n >= 1000 ? "1000+" : n ? String(n) : "";
    el.dataset.n = String(n);
  } catch (e) {
    // shown again at the next event
  }
};
const deadLater = throttle(deadCount, 500);

function live(state) {
  const el = document.getElementById("live");
  el.dataset.state = state;
  el.textContent = state === "live" ? "live" : "reconnecting…";
}

follow((kind, payload) => {
  if (current && current.onEvent) current.onEvent(kind, payload);
  if (kind.startsWith("delivery.") || kind === "workspace.removed") deadLater();
}, live);

// keep "x s ago" fresh without asking the server
setInterval(() => {
  for (const t of document.querySelectorAll("time.ago[data-epoch]")) t.textContent = ago(Number(t.dataset.epoch));
}, 1000);

document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", show);
show();
deadCount();
setInterval(deadCount, 10000);
