// The dashboard's transport layer: REST with the bearer token, Server-Sent Events read with fetch()
// (EventSource cannot send an Authorization header) and the client JSON-RPC WebSocket `/api/v1/rpc`
// (the token travels as the second subprotocol `bearer.<token>`; the server answers `cortex.v1`).
// No DOM here: app.js builds the views on top.

export const SUBPROTOCOL = "cortex.v1";

/** An HTTP error from the API: {error, message} plus the status. */
export class ApiError extends Error {
  constructor(status, error, message) {
    super(message || error || `HTTP ${status}`);
    this.status = status;
    this.error = error || "http_error";
  }
}

/** A JSON-RPC error answer from /api/v1/rpc. */
export class RpcError extends Error {
  constructor(code, message, data) {
    super(message || `error ${code}`);
    this.code = code;
    this.data = data;
  }
}

export const CANCELLED = -32800;

export class Api {
  /**
   * @param {string} base  origin of the server, e.g. "http://127.0.0.1:8765"
   * @param {string} token the user access token
   * @param {() => void} onUnauthorized called once a request comes back 401
   */
  constructor(base, token, onUnauthorized) {
    this.base = base;
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  async fetch(method, path, { body, signal, accept } = {}) {
    const headers = { Authorization: `Bearer ${this.token}` };
    if (accept) headers.Accept = accept;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
    if (!response.ok) {
      let error = "http_error";
      let message = `${response.status} ${response.statusText}`;
      try {
        const data = await response.json();
        error = data.error || error;
        message = data.message || message;
      } catch {
        /* not JSON: keep the status line */
      }
      if (response.status === 401 && this.onUnauthorized) this.onUnauthorized();
      throw new ApiError(response.status, error, message);
    }
    return response;
  }

  async json(method, path, options) {
    const response = await this.fetch(method, path, options);
    return response.json();
  }

  /** GET returning the raw body text too (the audit view hashes what the server sent). */
  async jsonWithText(path, options) {
    const response = await this.fetch("GET", path, options);
    const text = await response.text();
    return { data: JSON.parse(text), text };
  }

  nodes(signal) {
    return this.json("GET", "/api/v1/nodes", { signal });
  }

  tools(node, signal) {
    return this.json("GET", `/api/v1/nodes/${encodeURIComponent(node)}/tools`, { signal });
  }

  callTool(node, tool, args, timeoutS, signal) {
    const body = { arguments: args };
    if (timeoutS) body.timeout_s = timeoutS;
    const path = `/api/v1/nodes/${encodeURIComponent(node)}/tools/${encodeURIComponent(tool)}/call`;
    return this.json("POST", path, { body, signal });
  }

  audit(node, after, limit, signal) {
    const q = `after=${after}&limit=${limit}`;
    return this.jsonWithText(`/api/v1/nodes/${encodeURIComponent(node)}/audit?${q}`, { signal });
  }

  /** Clear a node's "rewound" audit status (admins only). */
  acknowledgeAudit(node) {
    return this.json("POST", `/api/v1/nodes/${encodeURIComponent(node)}/audit/acknowledge`);
  }

  /** An artifact (GET /api/v1/artifacts/{id}) as an object URL, fetched with the token. */
  async artifactUrl(url) {
    const path = url.startsWith(this.base) ? url.slice(this.base.length) : url;
    const response = await this.fetch("GET", path);
    return URL.createObjectURL(await response.blob());
  }

  /** Open an SSE stream (GET or POST) and yield {event, data} until it ends or `signal` aborts. */
  async *stream(method, path, { body, signal, onOpen } = {}) {
    const response = await this.fetch(method, path, { body, signal, accept: "text/event-stream" });
    onOpen?.(response);
    yield* readEventStream(response, signal);
  }
}

/** Parse a text/event-stream body per the HTML spec's rules (event, data, comments, blank line). */
export async function* readEventStream(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "";
  let data = [];
  const abort = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", abort, { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let index;
      while ((index = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, index);
        buffer = buffer.slice(index + (buffer.startsWith("\r\n", index) ? 2 : 1));
        if (line === "") {
          if (data.length) {
            const text = data.join("\n");
            let parsed;
            try {
              parsed = JSON.parse(text);
            } catch {
              parsed = text;
            }
            yield { event: event || "message", data: parsed };
          }
          event = "";
          data = [];
        } else if (line.startsWith(":")) {
          continue;
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
        }
      }
    }
  } finally {
    signal?.removeEventListener("abort", abort);
    reader.releaseLock?.();
  }
}

/**
 * The client JSON-RPC link (`WS /api/v1/rpc`). One socket, opened on first use, reopened after a drop.
 * `call()` returns {id, promise}; progress notifications go to the call's onProgress; `cancel(id)`
 * sends notifications/cancelled and settles the promise at once with an RpcError(CANCELLED)
 * (the server does not answer a cancelled request, as MCP says).
 */
export class RpcLink {
  constructor(base, token) {
    this.url = `${base.replace(/^http/, "ws")}/api/v1/rpc`;
    this.token = token;
    this.socket = null;
    this.opening = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, onProgress, token}
  }

  open() {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) return Promise.resolve(this.socket);
    if (this.opening) return this.opening;
    this.opening = new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url, [SUBPROTOCOL, `bearer.${this.token}`]);
      let opened = false;
      socket.addEventListener("open", () => {
        opened = true;
        this.socket = socket;
        this.opening = null;
        resolve(socket);
      });
      socket.addEventListener("message", (ev) => this.onMessage(ev.data));
      socket.addEventListener("close", (ev) => {
        this.opening = null;
        if (this.socket === socket) this.socket = null;
        if (!opened) reject(new RpcError(-32001, "could not open the RPC connection"));
        const error = new RpcError(-32010, `connection closed (${ev.code})`);
        for (const [, p] of this.pending) p.reject(error);
        this.pending.clear();
      });
    });
    return this.opening;
  }

  onMessage(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.method === "notifications/progress") {
      const params = message.params || {};
      for (const [, p] of this.pending) {
        if (p.token === params.progressToken) p.onProgress?.(params);
      }
      return;
    }
    if (message.method === "ping" && message.id !== undefined) {
      this.socket?.send(JSON.stringify({ jsonrpc: "2.0", id: message.id, result: {} }));
      return;
    }
    if (message.id === undefined || message.method !== undefined) return;
    const p = this.pending.get(message.id);
    if (!p) return;
    this.pending.delete(message.id);
    if (message.error) p.reject(new RpcError(message.error.code, message.error.message, message.error.data));
    else p.resolve(message.result);
  }

  /** Start `method` with `params`; returns {id, promise}. */
  call(method, params, { onProgress } = {}) {
    const id = this.nextId++;
    const token = onProgress ? `dash-${id}` : undefined;
    const body = { ...params };
    if (token) body._meta = { ...(body._meta || {}), progressToken: token };
    const promise = new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress, token });
    });
    this.open()
      .then((socket) => {
        if (this.pending.has(id)) socket.send(JSON.stringify({ jsonrpc: "2.0", id, method, params: body }));
      })
      .catch((error) => {
        const p = this.pending.get(id);
        this.pending.delete(id);
        p?.reject(error);
      });
    return { id, promise };
  }

  cancel(id, reason = "cancelled from the dashboard") {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(
        JSON.stringify({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: id, reason } }),
      );
    }
    p.reject(new RpcError(CANCELLED, reason));
  }

  close() {
    this.socket?.close(1000, "signed out");
    this.socket = null;
  }
}
