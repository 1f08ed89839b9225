// All workspaces with their state, queue, in-flight, heartbeat, restarts and crashes, live.
import { api } from "./api.js";
import { badge, throttle, fill, h, when } from "./dom.js";

export function workspaces() {
  let body, summary, timer;
  const load = async () => {
    let list;
    try {
      list = (await api("/v1/workspaces")).workspaces;
    } catch (e) {
      fill(summary, h("p", { class: "error" }, e.message));
      return;
    }
    const online = list.filter((w) => w.status === "online").length;
    const sum = (k) => list.reduce((n, w) => n + (w[k] || 0), 0);
    fill(
      summary,
      tile("Workspaces", list.length),
      tile("Online", online, "online"),
      tile("Queued", sum("queue_depth"), "queued"),
      tile("In flight", sum("in_flight"), "in-flight"),
      tile("Restarts", sum("restart_count")),
      tile("Crashes", sum("crash_count"), sum("crash_count") ? "warn" : ""),
    );
    if (!list.length) {
      fill(body, h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No workspace yet. Create one with ", h("code", {}, "berth ws create NAME -- python -m berth.examples.echo"))));
      return;
    }
    fill(body, list.map(row));
  };
  const refresh = throttle(load, 250);
  return {
    title: "Workspaces",
    mount(view) {
      summary = h("div", { class: "tiles", testid: "summary" });
      body = h("tbody", { testid: "workspace-rows" });
      fill(
        view,
        h("div", { class: "page-head" }, h("h1", {}, "Workspaces"), h("span", { class: "muted" }, "updated live")),
        summary,
        h(
          "div",
          { class: "card" },
          h(
            "table",
            { class: "grid", testid: "workspaces" },
            h("thead", {}, h("tr", {}, ["Name", "State", "Runtime", "Queued", "In flight", "Last heartbeat", "Restarts", "Crashes", "Last error"].map((t) => h("th", {}, t)))),
            body,
          ),
        ),
      );
      load();
      timer = setInterval(load, 5000); // queue depth moves without an event for every message
    },
    onEvent() {
      refresh();
    },
    unmount() {
      clearInterval(timer);
    },
  };
}

function tile(label, value, kind = "") {
  return h("div", { class: `tile ${kind}` }, h("div", { class: "tile-value" }, String(value)), h("div", { class: "tile-label" }, label));
}

function row(w) {
  const href = `#/ws/${encodeURIComponent(w.name)}`;
  return h(
    "tr",
    { testid: "workspace-row", dataset: { name: w.name, status: w.status }, class: "link", onclick: () => (window.location.hash = href.slice(1)) },
    h("td", {}, h("a", { href, class: "name" }, w.name)),
    h("td", {}, badge(w.status)),
    h("td", {}, w.runtime),
    h("td", { class: "num", testid: "queue" }, w.queue_depth ?? "—"),
    h("td", { class: "num", testid: "in-flight" }, w.in_flight ?? "—"),
    h("td", {}, when(w.last_heartbeat)),
    h("td", { class: "num", testid: "restarts" }, w.restart_count),
    h("td", { class: `num ${w.crash_count ? "warn" : ""}`, testid: "crashes" }, w.crash_count),
    h("td", { class: "error-text", title: w.last_error || "" }, w.last_error || ""),
  );
}
