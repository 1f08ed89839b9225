// One delivery: its timings, the request as sent and the agent's reply; retry or cancel.
import { api } from "./api.js";
import { badge, clock, h, secs, texts, toast } from "./dom.js";

export const RETRYABLE = new Set(["dead", "canceled", "expired"]);

export async function retry(d, after) {
  try {
    await api(`/v1/deliveries/${encodeURIComponent(d.id)}/retry`, { method: "POST" });
    toast(`Queued ${d.message_id} again`);
  } catch (e) {
    toast(`Retry refused: ${e.message}`, "error");
  }
  after && after();
}

export async function cancel(d, after) {
  try {
    await api(`/v1/deliveries/${encodeURIComponent(d.id)}/cancel`, { method: "POST" });
    toast(`Canceled ${d.message_id}`);
  } catch (e) {
    toast(`Cancel refused: ${e.message}`, "error");
  }
  after && after();
}

export function actions(d, after) {
  return [
    RETRYABLE.has(d.status) &&
      h("button", { type: "button", class: "small", testid: "retry", onclick: (ev) => (ev.stopPropagation(), retry(d, after)) }, "Retry"),
    d.status === "queued" &&
      h("button", { type: "button", class: "small danger", testid: "cancel", onclick: (ev) => (ev.stopPropagation(), cancel(d, after)) }, "Cancel"),
  ];
}

function json(title, doc, testid, none = "none yet") {
  const text = doc === null || doc === undefined ? "" : texts(doc);
  return h(
    "section",
    { class: "doc", testid },
    h("h4", {}, title),
    text && h("p", { class: "said", testid: `${testid}-text` }, text),
    doc === null || doc === undefined
      ? h("p", { class: "muted" }, none)
      : h("pre", { class: "json" }, JSON.stringify(doc, null, 2)),
  );
}

// Fills `box` with the delivery's detail; `after` runs once a retry or cancel is done.
export async function show(box, d, after) {
  const took = d.finished_at ? d.finished_at - d.created_at : null;
  const facts = [
    ["Delivery id", h("code", {}, d.id)],
    ["Message id", h("code", { testid: "detail-message-id" }, d.message_id)],
    ["Method", d.method],
    ["Status", badge(d.status)],
    ["Attempts", `${d.attempts} counted failure${d.attempts === 1 ? "" : "s"}, sent ${d.forwards} time${d.forwards === 1 ? "" : "s"}`],
    ["Accepted", clock(d.created_at, true)],
    ["First sent", d.first_forwarded_at ? `${clock(d.first_forwarded_at)} (+${secs(d.first_forwarded_at - d.created_at)})` : "—"],
    ["Finished", d.finished_at ? `${clock(d.finished_at)} (${secs(took)} after acceptance)` : "—"],
    ["Reason", d.reason || "—"],
  ];
  const request = h("div", { class: "doc-slot" }, h("p", { class: "muted" }, "loading the request…"));
  box.replaceChildren(
    h(
      "div",
      { class: "detail", testid: "delivery-detail", dataset: { id: d.id, status: d.status } },
      h("div", { class: "detail-head" }, h("h3", {}, "Delivery"), h("span", { class: "spacer" }), actions(d, after)),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      h("div", { class: "docs" }, request, json("Reply", d.reply, "reply", d.finished_at ? `none: berth gave up (${d.status})` : "none yet")),
    ),
  );
  try {
    const r = await api(`/v1/deliveries/${encodeURIComponent(d.id)}/request`);
    request.replaceChildren(json("Request", r.request, "request"));
  } catch (e) {
    request.replaceChildren(h("p", { class: "error" }, `request: ${e.message}`));
  }
}
