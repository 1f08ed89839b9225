// Talks to berth's public /v1 API with the session cookie; repeats the CSRF token on
// every state-changing request; follows GET /v1/events (server-sent events).

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return "";
}

function signedOut() {
  window.location.assign("/ui/login");
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-berth-csrf"] = cookie("berth_csrf");
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (r.status === 401) {
    signedOut();
  }
  if (!r.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(r.status, err.code || "http_error", err.message || `HTTP ${r.status}`);
  }
  return data;
}

export async function signOut() {
  try {
    await api("/ui/logout", { method: "POST" });
  } finally {
    signedOut();
  }
}

// Follow the event stream; `onEvent(kind, payload)` for every event whatever its kind,
// `onState("live" | "reconnecting")`. Reconnects with a growing pause (at most 5 s).
export function follow(onEvent, onState) {
  let pause = 500;
  let stopped = false;
  const parse = (block) => {
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return;
    try {
      onEvent(kind, JSON.parse(data.join("\n")));
    } catch (e) {
      console.warn("bad event", kind, e);
    }
  };
  const run = async () => {
    while (!stopped) {
      try {
        const r = await fetch("/v1/events", {
          headers: { accept: "text/event-stream" },
          credentials: "same-origin",
          cache: "no-store",
        });
        if (r.status === 401) return signedOut();
        if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
        onState("live");
        pause = 500;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            parse(buf.slice(0, cut));
            buf = buf.slice(cut + 2);
          }
        }
      } catch (e) {
        // fall through to reconnect
      }
      if (stopped) return;
      onState("reconnecting");
      await new Promise((ok) => setTimeout(ok, pause));
      pause = Math.min(pause * 2, 5000);
    }
  };
  run();
  return () => {
    stopped = true;
  };
}
