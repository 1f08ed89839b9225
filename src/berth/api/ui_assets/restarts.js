// A workspace's restart history: each cycle as a timeline of its phases, with timings and
// the drain report.
import { api } from "./api.js";
import { clock, fill, h, secs, when } from "./dom.js";

export function restarts(name) {
  let list;
  const load = async () => {
    let records;
    try {
      records = (await api(`/v1/workspaces/${encodeURIComponent(name)}/restarts?limit=20`)).restarts;
    } catch (e) {
      fill(list, h("p", { class: "error" }, e.message));
      return;
    }
    if (!records.length) {
      fill(list, h("p", { class: "empty" }, "No restart yet."));
      return;
    }
    fill(list, records.map(card));
  };
  let polling = false;
  return {
    mount(pane) {
      list = h("div", { class: "restarts", testid: "restarts" });
      fill(pane, list);
      load();
    },
    refresh: load,
    poll() {
      // while a cycle runs its phases change by the second; then every event refreshes
      const running = list.querySelector('[data-finished="false"]');
      if (running || !polling) load();
      polling = true;
    },
  };
}

function card(r) {
  const end = r.finished_at || Date.now() / 1000;
  const total = Math.max(end - r.created_at, 0.001);
  const ok = r.phase === "done";
  const state = r.finished_at ? (ok ? "done" : r.phase === "rolled_back" ? "rolled back" : "failed") : "running";
  return h(
    "article",
    { class: `restart card inner r-${state}`, testid: "restart", dataset: { id: r.id, phase: r.phase, finished: String(Boolean(r.finished_at)) } },
    h(
      "header",
      { class: "restart-head" },
      h("span", { class: `badge s-${state === "running" ? "in_flight" : state === "done" ? "online" : "failed"}`, testid: "restart-state" }, state === "running" ? `running: ${r.phase}` : state),
      h("strong", {}, triggerText(r)),
      r.reason && h("span", { class: "muted" }, `“${r.reason}”`),
      h("span", { class: "spacer" }),
      h("span", { class: "muted" }, when(r.created_at)),
      h("span", { class: "took", testid: "restart-seconds" }, r.finished_at ? secs(r.finished_at - r.created_at) : "…"),
    ),
    h(
      "div",
      { class: "timeline", testid: "timeline" },
      r.phases.map((p) => {
        const stop = p.ended_at || end;
        const width = Math.max(((stop - p.started_at) / total) * 100, 1.5);
        return h(
          "div",
          { class: `seg p-${p.phase}${p.ended_at ? "" : " open"}`, style: { flexGrow: String(width) }, title: `${p.phase}: ${secs(p.seconds ?? stop - p.started_at)}`, testid: "segment", dataset: { phase: p.phase } },
          h("span", {}, p.phase),
        );
      }),
    ),
    h(
      "table",
      { class: "grid phases", testid: "phases" },
      h("thead", {}, h("tr", {}, ["Phase", "Started", "At", "Took", "Detail"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        r.phases.map((p) =>
          h(
            "tr",
            { testid: "phase", dataset: { phase: p.phase } },
            h("td", {}, h("span", { class: `dot p-${p.phase}` }), p.phase),
            h("td", {}, clock(p.started_at)),
            h("td", { class: "num" }, `+${secs(p.started_at - r.created_at)}`),
            h("td", { class: "num" }, p.ended_at ? secs(p.seconds) : "running…"),
            h("td", { class: "reason" }, p.detail || ""),
          ),
        ),
      ),
    ),
    r.error && h("p", { class: "banner error" }, r.error),
    drain(r.drain_report),
  );
}

function triggerText(r) {
  return { api: "Requested by an operator", policy: "After a crash (restart policy)", resume: "Resume", startup: "At berth's start", config: "Configuration change" }[r.trigger] || r.trigger;
}

function drain(d) {
  if (!d) return h("p", { class: "muted drain", testid: "drain-report" }, "No drain report (the cycle did not drain, or has not yet).");
  const mode = { agent: "the agent drained itself", berth: "berth waited for in-flight work", skipped: "drain skipped" }[d.mode] || d.mode;
  return h(
    "div",
    { class: "drain", testid: "drain-report" },
    h("h4", {}, "Drain report"),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Mode"),
      h("dd", {}, mode),
      h("dt", {}, "Drained"),
      h("dd", { class: d.drained ? "ok-text" : "error-text" }, d.drained ? "yes, nothing was cut" : "no"),
      h("dt", {}, "Still in flight after it"),
      h("dd", {}, String(d.in_flight)),
      h("dt", {}, "Completed (messageIds)"),
      h("dd", {}, d.completed && d.completed.length ? d.completed.join(", ") : "none"),
      h("dt", {}, "Unfinished (redelivered)"),
      h("dd", {}, d.unfinished && d.unfinished.length ? d.unfinished.join(", ") : "none"),
      d.detail && [h("dt", {}, "Detail"), h("dd", {}, d.detail)],
    ),
  );
}
