// One workspace: its figures and actions, then its deliveries, restarts and log tail.
import { api } from "./api.js";
import { actions, show } from "./delivery.js";
import { badge, clock, throttle, fill, h, secs, texts, toast, when } from "./dom.js";
import { restarts } from "./restarts.js";

const STATUSES = ["", "queued", "in_flight", "done", "dead", "canceled", "expired"];
const TABS = [
  ["deliveries", "Deliveries"],
  ["restarts", "Restarts"],
  ["logs", "Log"],
];

export function workspace(name, tab = "deliveries") {
  const ref = encodeURIComponent(name);
  let ws = null;
  let head, pane, timer, tabView;
  const loadHead = async () => {
    try {
      ws = await api(`/v1/workspaces/${ref}`);
    } catch (e) {
      fill(head, h("p", { class: "error", testid: "workspace-error" }, e.status === 404 ? `No workspace named ${name}.` : e.message));
      return;
    }
    fill(head, header(ws, loadHead));
  };
  const refresh = throttle(() => {
    loadHead();
    tabView && tabView.refresh();
  }, 250);
  return {
    title: name,
    mount(view) {
      head = h("div", { testid: "workspace-head" }, h("p", { class: "muted" }, "loading…"));
      pane = h("div", { class: "card pane" });
      const nav = h(
        "div",
        { class: "tabs", role: "tablist" },
        TABS.map(([key, label]) =>
          h("a", { href: `#/ws/${ref}/${key}`, class: key === tab ? "tab active" : "tab", role: "tab", testid: `tab-${key}` }, label),
        ),
      );
      fill(view, h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Workspaces"), " / ", name), head, nav, pane);
      tabView = tab === "restarts" ? restarts(name) : tab === "logs" ? logs(name) : deliveries(name);
      tabView.mount(pane);
      loadHead();
      timer = setInterval(() => {
        loadHead();
        tabView.poll && tabView.poll();
      }, 2000);
    },
    onEvent(kind, p) {
      if (!ws || !p.workspace_id || p.workspace_id === ws.id || p.name === name) refresh();
    },
    unmount() {
      clearInterval(timer);
      tabView && tabView.unmount && tabView.unmount();
    },
  };
}

function header(ws, reload) {
  const act = async (verb, body) => {
    try {
      const r = await api(`/v1/workspaces/${encodeURIComponent(ws.name)}/${verb}`, { method: "POST", body });
      toast(verb === "restart" ? (r.joined ? "Joined the restart under way" : "Restart requested") : `${verb}d`);
      if (verb === "restart") window.location.hash = `#/ws/${encodeURIComponent(ws.name)}/restarts`;
    } catch (e) {
      toast(`${verb}: ${e.message}`, "error");
    }
    reload();
  };
  const paused = ws.status === "paused";
  const facts = [
    ["Queued", ws.queue_depth, "queue"],
    ["In flight", ws.in_flight, "in-flight"],
    ["Active tasks", ws.active_tasks, "active"],
    ["Last heartbeat", when(ws.last_heartbeat), "heartbeat"],
    ["Restarts", ws.restart_count, "restarts"],
    ["Crashes", ws.crash_count, "crashes"],
  ];
  return h(
    "div",
    { class: "card ws-head", dataset: { status: ws.status } },
    h(
      "div",
      { class: "ws-title" },
      h("h1", { testid: "workspace-name" }, ws.name),
      badge(ws.status),
      h("span", { class: "muted" }, `${ws.runtime}${ws.pid ? ` · pid ${ws.pid}` : ""}${ws.container ? ` · ${ws.container}` : ""} · max ${ws.max_concurrency} at once · drain ${ws.drain_seconds} s · ${ws.restart_policy}`),
      h("span", { class: "spacer" }),
      h("button", { type: "button", class: "primary", testid: "restart-button", onclick: () => act("restart", { reason: "from the dashboard" }) }, "Restart"),
      paused
        ? h("button", { type: "button", testid: "resume", onclick: () => act("resume") }, "Resume")
        : h("button", { type: "button", testid: "pause", onclick: () => act("pause") }, "Pause"),
    ),
    h("div", { class: "tiles inline" }, facts.map(([k, v, id]) => h("div", { class: "tile" }, h("div", { class: "tile-value", testid: `ws-${id}` }, v ?? "—"), h("div", { class: "tile-label" }, k)))),
    ws.last_error && h("p", { class: "banner error", testid: "last-error" }, ws.last_error),
  );
}

function deliveries(name) {
  const ref = encodeURIComponent(name);
  let status = "";
  let selected = null; // the delivery shown in the detail panel
  let body, detail, count, findBox, found;
  const showOne = async (d) => {
    selected = d;
    await show(detail, d, () => (load(), reshow()));
  };
  const reshow = async () => {
    if (!selected) return;
    try {
      showOne(await api(`/v1/deliveries/${encodeURIComponent(selected.id)}`));
    } catch (e) {
      fill(detail, h("p", { class: "error" }, e.message));
    }
  };
  const load = async () => {
    const q = status ? `&status=${status}` : "";
    let list;
    try {
      list = (await api(`/v1/workspaces/${ref}/deliveries?limit=200${q}`)).deliveries.reverse();
    } catch (e) {
      fill(body, h("tr", {}, h("td", { colspan: 8, class: "error" }, e.message)));
      return;
    }
    count.textContent = `${list.length} shown, newest first`;
    if (!list.length) {
      fill(body, h("tr", {}, h("td", { colspan: 8, class: "empty" }, status ? `No ${status.replace("_", " ")} delivery.` : "No delivery yet.")));
    } else {
      fill(body, list.map((d) => drow(d, selected && selected.id === d.id, () => showOne(d), load)));
    }
    if (selected && !selected.finished_at) {
      const now = list.find((d) => d.id === selected.id);
      if (now && now.status !== selected.status) showOne(now);
    }
  };
  const find = async (ev) => {
    ev.preventDefault();
    const mid = findBox.value.trim();
    if (!mid) return;
    try {
      const d = await api(`/v1/workspaces/${ref}/deliveries/by-message-id?message_id=${encodeURIComponent(mid)}`);
      fill(found, "");
      await showOne(d);
      load();
    } catch (e) {
      fill(found, h("span", { class: "error", testid: "find-error" }, e.status === 404 ? `No delivery of messageId “${mid}”.` : e.message));
    }
  };
  const refresh = throttle(load, 250);
  return {
    mount(pane) {
      body = h("tbody", { testid: "delivery-rows" });
      detail = h("div", { class: "detail-slot" });
      count = h("span", { class: "muted" });
      findBox = h("input", { type: "search", placeholder: "messageId", testid: "find-message-id", "aria-label": "Find by messageId" });
      found = h("span", {});
      const filter = h(
        "select",
        { testid: "status-filter", "aria-label": "Status", onchange: (ev) => ((status = ev.target.value), load()) },
        STATUSES.map((s) => h("option", { value: s }, s ? s.replace("_", " ") : "all statuses")),
      );
      fill(
        pane,
        h(
          "div",
          { class: "toolbar" },
          h("label", {}, "Status ", filter),
          h("form", { class: "find", onsubmit: find }, findBox, h("button", { type: "submit", testid: "find" }, "Find")),
          found,
          h("span", { class: "spacer" }),
          count,
        ),
        h(
          "div",
          { class: "split" },
          h(
            "div",
            { class: "scroll" },
            h(
              "table",
              { class: "grid", testid: "deliveries" },
              h("thead", {}, h("tr", {}, ["Message id", "Reply", "Status", "Tries", "Accepted", "Took", "Reason", ""].map((t) => h("th", { class: t === "Reply" ? "col-reply" : null }, t)))),
              body,
            ),
          ),
          detail,
        ),
      );
      load();
    },
    refresh,
    poll: load,
  };
}

function drow(d, active, open, after) {
  const took = d.finished_at ? d.finished_at - d.created_at : null;
  return h(
    "tr",
    { class: active ? "link active" : "link", testid: "delivery-row", dataset: { id: d.id, messageId: d.message_id, status: d.status }, onclick: open },
    h("td", {}, h("code", { class: "mid", title: d.message_id }, d.message_id)),
    h("td", { class: "said-cell col-reply" }, texts(d.reply) || ""),
    h("td", {}, badge(d.status)),
    h("td", { class: "num", title: "counted failures / times sent" }, `${d.attempts}/${d.forwards}`),
    h("td", { class: "time", title: clock(d.created_at, true) }, clock(d.created_at, false, false)),
    h("td", { class: "num" }, d.finished_at ? secs(took) : h("span", { class: "muted" }, "…")),
    h("td", { class: "reason", title: d.reason || "" }, d.reason || ""),
    h("td", { class: "actions" }, actions(d, after)),
  );
}

function logs(name) {
  let pre, follow;
  const load = async () => {
    try {
      const text = await api(`/v1/workspaces/${encodeURIComponent(name)}/logs?tail=300`);
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.textContent = text || "(the log is empty)";
      if (atEnd || !pre.dataset.loaded) pre.scrollTop = pre.scrollHeight;
      pre.dataset.loaded = "1";
    } catch (e) {
      pre.textContent = `could not read the log: ${e.message}`;
    }
  };
  return {
    mount(pane) {
      pre = h("pre", { class: "log", testid: "log" }, "loading…");
      follow = h("input", { type: "checkbox", checked: true, testid: "follow" });
      fill(
        pane,
        h("div", { class: "toolbar" }, h("span", { class: "muted" }, "The last 300 lines of the agent's output"), h("span", { class: "spacer" }), h("label", {}, follow, " follow"), h("button", { type: "button", onclick: load }, "Refresh")),
        pre,
      );
      load();
    },
    refresh() {},
    poll() {
      if (follow.checked) load();
    },
  };
}
