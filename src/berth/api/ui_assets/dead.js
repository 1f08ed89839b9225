// Dead letters of every workspace: what died and why; look at it, queue it again.
import { api } from "./api.js";
import { actions, show } from "./delivery.js";
import { clock, throttle, fill, h, when } from "./dom.js";

export function dead() {
  let body, detail, count, selected = null;
  const load = async () => {
    let list;
    try {
      list = (await api("/v1/dead-letters?limit=200")).deliveries;
    } catch (e) {
      fill(body, h("tr", {}, h("td", { colspan: 6, class: "error" }, e.message)));
      return;
    }
    count.textContent = `${list.length} dead`;
    if (!list.length) {
      fill(body, h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No dead letter. Every message berth accepted was delivered, canceled or expired.")));
      return;
    }
    fill(
      body,
      list.map((d) =>
        h(
          "tr",
          { class: selected && selected.id === d.id ? "link active" : "link", testid: "dead-row", dataset: { id: d.id, messageId: d.message_id }, onclick: () => open(d) },
          h("td", {}, h("a", { href: `#/ws/${encodeURIComponent(d.workspace)}`, onclick: (ev) => ev.stopPropagation() }, d.workspace)),
          h("td", {}, h("code", { class: "mid", title: d.message_id }, d.message_id)),
          h("td", { class: "reason" }, d.reason || ""),
          h("td", { class: "num" }, `${d.attempts}/${d.forwards}`),
          h("td", { class: "time", title: clock(d.finished_at, true) }, when(d.finished_at)),
          h("td", { class: "actions" }, actions(d, after)),
        ),
      ),
    );
  };
  const after = () => {
    load();
    if (selected) api(`/v1/deliveries/${encodeURIComponent(selected.id)}`).then(open, () => {});
  };
  const open = (d) => {
    selected = d;
    show(detail, d, after);
  };
  const refresh = throttle(load, 250);
  return {
    title: "Dead letters",
    mount(view) {
      body = h("tbody", { testid: "dead-rows" });
      detail = h("div", { class: "detail-slot" });
      count = h("span", { class: "muted" });
      fill(
        view,
        h("div", { class: "page-head" }, h("h1", {}, "Dead letters"), count),
        h("p", { class: "muted lead" }, "Messages berth gave up on: the agent crashed under them again and again, or rejected them. Retry puts one at the back of its workspace's queue with its attempts reset."),
        h(
          "div",
          { class: "split card pane" },
          h(
            "div",
            { class: "scroll" },
            h("table", { class: "grid", testid: "dead" }, h("thead", {}, h("tr", {}, ["Workspace", "Message id", "Reason", "Tries", "Died", ""].map((t) => h("th", {}, t)))), body),
          ),
          detail,
        ),
      );
      load();
    },
    onEvent(kind) {
      if (kind.startsWith("delivery.") || kind === "workspace.removed") refresh();
    },
  };
}
