// The dashboard's entry point: sign-in, the hash router and the four views (nodes, node tools,
// audit log, assistant). Transport lives in api.js, chain checking in audit.js, schema forms in
// forms.js, DOM helpers and result rendering in dom.js. No build step: plain ES modules.
//
// Invariants:
//  1. The token lives in sessionStorage only. A `#token=...` link is read once, stored, and removed
//     from the address bar (history.replaceState) before any request is made.
//  2. One node-event stream (SSE over fetch) per signed-in page; it reconnects with capped backoff and
//     every view renders from the same `nodes` map, so status changes appear without reload.
//  3. A view's work (timers, fetches, running calls) is tied to an AbortController that is aborted
//     when the view is left.
//  4. A `#token=` link for another identity (sub, workspace or role) than the one signed in in this tab
//     is not taken silently: the page asks first; until then the new token is held in memory only.

import { Api, ApiError, CANCELLED, RpcError, RpcLink } from "./api.js";
import { ChainVerifier, parseLossless } from "./audit.js";
import { clear, formatJson, h, relativeTime, renderResult, timeElement, uid } from "./dom.js";
import { FieldError, schemaFields } from "./forms.js";
import { processesView } from "./processes.js";
import { enrollControls, recentCallsView, revokeButton } from "./fleet.js";
import { addNodePanel, argsDetails, expiryText, fullTime, nodeFilterBar, tokenRefusedMessage } from "./onboarding.js";

const TOKEN_KEY = "cortex.token";
const AUDIT_PAGE = 25;
const AUDIT_CHUNK = 1000;
const AUDIT_MAX_CHUNKS = 200;

function decodeClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")), (c) =>
        `%${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
      ).join(""),
    );
    return JSON.parse(json);
  } catch {
    return {};
  }
}

/** The red "audit rewound" badge (Node.audit.status), or null while the chain head is fine. */
function auditBadge(audit) {
  if (!audit || audit.status !== "rewound") return null;
  return h(
    "span",
    { class: "badge badge-rewound", "data-audit": "rewound", title: "The node's audit log went backwards or was rewritten: records were deleted or changed." },
    h("span", { "aria-hidden": "true" }, "⚠ "),
    "audit rewound",
  );
}

function identityText(claims) {
  return `${claims.sub || "?"} · ${claims.ws || "?"}${claims.role === "admin" ? " · admin" : ""}`;
}

function sameIdentity(a, b) {
  return a.sub === b.sub && a.ws === b.ws && a.role === b.role;
}

/** Rule 4: a modal question; resolves true when the user chose to switch identities. */
function confirmIdentitySwitch(current, next) {
  return new Promise((resolve) => {
    const titleId = uid("switch");
    const dialog = h(
      "dialog",
      { class: "card confirm-switch", "aria-labelledby": titleId },
      h("h2", { id: titleId }, "Switch identity?"),
      h("p", {}, "You are signed in as ", h("strong", {}, identityText(current)), "."),
      h("p", {}, "The link you opened signs in as ", h("strong", {}, identityText(next)), "."),
    );
    const finish = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    const stay = h("button", { type: "button", class: "primary" }, `Stay ${current.sub || "signed in"}`);
    const change = h("button", { type: "button" }, `Switch to ${next.sub || "the new identity"}`);
    stay.addEventListener("click", () => finish(false));
    change.addEventListener("click", () => finish(true));
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      finish(false);
    });
    dialog.append(h("div", { class: "actions" }, stay, change));
    document.body.append(dialog);
    dialog.showModal();
    stay.focus();
  });
}

function statusBadge(status) {
  const label = { connected: "Connected", unhealthy: "Unhealthy", disconnected: "Disconnected", unknown: "Unknown node" }[status] || status;
  return h("span", { class: `badge badge-${status}`, "data-status": status }, h("span", { "aria-hidden": "true" }, "● "), label);
}

/** An audit timestamp with date, time and time zone, the exact value on hover. */
function clockTime(iso) {
  return fullTime(iso);
}

/** "alice/planner:abc@ws1" with break opportunities after "/" and before "@" (no mid-word breaks). */
function callerText(caller) {
  const parts = String(caller.sub).split("/");
  return h("span", { class: "caller", title: `${caller.sub}@${caller.ws}` }, parts.map((p, i) => (i ? `/${p}` : p)), `@${caller.ws}`);
}

function errorText(error) {
  if (error instanceof ApiError) return `${error.message} (${error.status} ${error.error})`;
  if (error instanceof RpcError) return `${error.message} (code ${error.code})`;
  return String(error?.message || error);
}

class Dashboard {
  constructor() {
    this.main = document.getElementById("main");
    this.announcer = document.getElementById("announcer");
    this.nav = document.getElementById("nav");
    this.who = document.getElementById("who");
    this.live = document.getElementById("live");
    this.signOutButton = document.getElementById("sign-out");
    this.signOutButton.addEventListener("click", () => this.signOut("Signed out."));
    this.nodes = new Map();
    this.nodeListeners = new Set();
    this.api = null;
    this.rpc = null;
    this.session = null; // AbortController of the signed-in session (event stream)
    this.view = null; // AbortController of the current view
    window.addEventListener("hashchange", () => (this.takeTokenFromLink() ? this.start() : this.route()));
  }

  /** Rule 1: a `#token=` link is stored and wiped from the address bar; true when there was one. */
  takeTokenFromLink() {
    const match = /^#token=([^&]+)/.exec(location.hash);
    if (!match) return false;
    history.replaceState(null, "", `${location.pathname}${location.search}#/nodes`);
    const token = decodeURIComponent(match[1]);
    const current = this.api?.token || sessionStorage.getItem(TOKEN_KEY);
    if (current && current !== token && !sameIdentity(decodeClaims(current), decodeClaims(token))) {
      this.askToSwitch(current, token);
      return true; // the current session goes on until the user answers
    }
    if (this.api && this.api.token !== token) this.signOut("");
    sessionStorage.setItem(TOKEN_KEY, token);
    return true;
  }

  /** Rule 4: the link's token replaces the signed-in one only if the user says so. */
  async askToSwitch(current, token) {
    const switchTo = await confirmIdentitySwitch(decodeClaims(current), decodeClaims(token));
    if (!switchTo) {
      this.announce(`Still signed in as ${decodeClaims(current).sub || "before"}.`);
      return;
    }
    this.signOut("");
    sessionStorage.setItem(TOKEN_KEY, token);
    this.signIn(token);
  }

  announce(text) {
    this.announcer.textContent = "";
    // A fresh text node is announced again even when the text repeats.
    requestAnimationFrame(() => {
      this.announcer.textContent = text;
    });
  }

  start() {
    this.takeTokenFromLink();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (this.api && this.api.token === token) this.route();
    else if (token) this.signIn(token, { quiet: true });
    else this.showSignIn();
  }

  // ---- session -------------------------------------------------------------------------------

  showSignIn(message) {
    document.body.dataset.signedIn = "false";
    this.nav.hidden = true;
    this.signOutButton.hidden = true;
    this.who.textContent = "";
    this.live.textContent = "";
    const tokenId = uid("token");
    const errorId = uid("signin-error");
    const input = h("textarea", {
      id: tokenId,
      name: "token",
      rows: "4",
      required: true,
      autocomplete: "off",
      spellcheck: "false",
      "aria-describedby": `${tokenId}-hint ${errorId}`,
    });
    const error = h("p", { id: errorId, class: "field-error", role: "alert" }, message || "");
    const form = h(
      "form",
      { class: "card signin", "aria-labelledby": "signin-title", novalidate: true },
      h("h1", { id: "signin-title" }, "Sign in to Cortex"),
      h("label", { for: tokenId }, "User access token"),
      input,
      h(
        "p",
        { id: `${tokenId}-hint`, class: "hint" },
        "Paste a token from ",
        h("code", {}, "cortex-server issue-token NAME --workspace W"),
        ". It is kept in this tab's session storage only.",
      ),
      error,
      h("button", { type: "submit", class: "primary" }, "Sign in"),
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) {
        error.textContent = "Enter a token.";
        input.focus();
        return;
      }
      const probe = new Api(location.origin, token);
      try {
        await probe.nodes();
      } catch (e) {
        error.textContent =
          e instanceof ApiError && (e.status === 401 || e.status === 403)
            ? "That token was refused: it is invalid, expired or not a user token."
            : `Could not reach the server: ${errorText(e)}`;
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      this.signIn(token);
    });
    clear(this.main, form);
    input.focus();
  }

  signIn(token, { quiet = false } = {}) {
    const claims = decodeClaims(token);
    this.claims = claims;
    this.tokenAccepted = false;
    this.api = new Api(location.origin, token, () => this.signOut(tokenRefusedMessage(claims, this.tokenAccepted)));
    this.rpc = new RpcLink(location.origin, token);
    document.body.dataset.signedIn = "true";
    this.nav.hidden = false;
    this.signOutButton.hidden = false;
    this.who.textContent = claims.sub ? `${claims.sub} · ${claims.ws}${claims.role === "admin" ? " · admin" : ""}` : "";
    this.who.dataset.testid = "who";
    if (claims.sub) {
      const exp = h("span", { class: "muted small expiry", title: claims.exp ? new Date(claims.exp * 1000).toISOString() : "" }, ` · token ${expiryText(claims.exp)}`);
      this.who.append(exp);
      clearInterval(this.whoTimer);
      this.whoTimer = setInterval(() => (exp.textContent = ` · token ${expiryText(claims.exp)}`), 30000);
    }
    this.session = new AbortController();
    this.followEvents(this.session.signal);
    if (!quiet) this.announce(`Signed in${claims.sub ? ` as ${claims.sub}` : ""}.`);
    if (!location.hash || location.hash === "#") history.replaceState(null, "", "#/nodes");
    this.route();
  }

  signOut(message) {
    if (!this.api) return;
    sessionStorage.removeItem(TOKEN_KEY);
    clearInterval(this.whoTimer);
    this.session?.abort();
    this.view?.abort();
    this.rpc?.close();
    this.api = null;
    this.rpc = null;
    this.nodes.clear();
    history.replaceState(null, "", `${location.pathname}${location.search}`);
    this.showSignIn(message);
    if (message) this.announce(message);
  }

  // ---- node events ---------------------------------------------------------------------------

  async followEvents(signal) {
    let delay = 500;
    for (let attempt = 0; !signal.aborted; attempt++) {
      const started = Date.now();
      try {
        this.setLive("connecting");
        const onOpen = () => {
          this.tokenAccepted = true;
          this.setLive("live");
        };
        for await (const { event, data } of this.api.stream("GET", "/api/v1/events", { signal, onOpen })) {
          if (event.startsWith("node.") && data && data.name) this.updateNode(data);
        }
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof ApiError && e.status === 401) return;
      }
      if (signal.aborted) return;
      this.setLive("reconnecting");
      if (Date.now() - started > 30000) delay = 500;
      const wait = Math.random() * delay;
      delay = Math.min(delay * 2, 15000);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, wait);
        signal.addEventListener("abort", () => clearTimeout(timer) || resolve(), { once: true });
      });
    }
  }

  setLive(state) {
    const text = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" }[state];
    this.live.dataset.state = state;
    this.live.textContent = text;
  }

  updateNode(node) {
    const before = this.nodes.get(node.name);
    this.nodes.set(node.name, node);
    if (before && before.status !== node.status) this.announce(`Node ${node.name} is ${node.status}.`);
    else if (!before) this.announce(`Node ${node.name} appeared (${node.status}).`);
    for (const listener of this.nodeListeners) listener(node);
  }

  onNodes(signal, listener) {
    this.nodeListeners.add(listener);
    signal.addEventListener("abort", () => this.nodeListeners.delete(listener), { once: true });
  }

  // ---- routing -------------------------------------------------------------------------------

  route() {
    if (!this.api) return;
    this.view?.abort();
    this.view = new AbortController();
    const signal = this.view.signal;
    const [rawPath, rawQuery = ""] = location.hash.replace(/^#/, "").split("?");
    const path = decodeURI(rawPath) || "/nodes";
    const parts = path.split("/").filter(Boolean);
    for (const link of this.nav.querySelectorAll("a")) {
      const current = parts[0] === link.dataset.section;
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (parts[0] === "assistant") this.assistantView(signal, new URLSearchParams(rawQuery));
    else if (parts[0] === "calls") recentCallsView(this.main, this.api, signal);
    else if (parts[0] === "nodes" && parts[1] && parts[2] === "audit") this.auditView(signal, parts[1]);
    else if (parts[0] === "nodes" && parts[1] && parts[2] === "processes") processesView(this, signal, parts[1]);
    else if (parts[0] === "nodes" && parts[1]) this.nodeView(signal, parts[1]);
    else this.nodesView(signal);
    const heading = this.main.querySelector("h1");
    if (heading) {
      heading.tabIndex = -1;
      document.title = `${heading.textContent} · Cortex`;
      // Move focus to the new view (for keyboard and screen-reader users) unless the view took it.
      if (!this.main.contains(document.activeElement)) heading.focus({ preventScroll: true });
    }
  }

  // ---- nodes view ----------------------------------------------------------------------------

  nodesView(signal) {
    const body = h("tbody");
    const empty = h(
      "p",
      { class: "muted empty" },
      "No nodes yet. Enroll one with ",
      h("code", {}, "cortex-server enroll-node NAME --workspace W"),
      " and start its agent; it appears here as soon as it connects.",
    );
    const table = h(
      "table",
      { class: "nodes", "aria-describedby": "nodes-caption" },
      h("caption", { id: "nodes-caption", class: "visually-hidden" }, "Nodes of your workspace and their live status"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Node", "Status", "Last seen", "Round trip", "OS", "Agent", "Tools"].map((c) => h("th", { scope: "col" }, c)),
        ),
      ),
      body,
    );
    const noMatch = h("p", { class: "muted empty", hidden: true, "data-testid": "no-match" }, "No node matches the search.");
    const filter = nodeFilterBar(() => render());
    const render = () => {
      const all = [...this.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
      const nodes = all.filter(filter.matches);
      empty.hidden = all.length > 0;
      noMatch.hidden = !(all.length > 0 && nodes.length === 0);
      table.hidden = nodes.length === 0;
      clear(
        body,
        nodes.map((n) =>
          h(
            "tr",
            { "data-node": n.name, "data-status": n.status },
            h(
              "th",
              { scope: "row", "data-label": "Node" },
              h(
                "span",
                {},
                h("a", { href: `#/nodes/${encodeURIComponent(n.name)}` }, n.name),
                h("span", { class: "muted small" }, ` ${n.workspace}`),
              ),
            ),
            h("td", { "data-label": "Status" }, statusBadge(n.status), " ", auditBadge(n.audit)),
            h("td", { "data-label": "Last seen" }, timeElement(n.last_seen)),
            h("td", { "data-label": "Round trip" }, n.rtt_ms == null ? "—" : `${n.rtt_ms.toFixed(1)} ms`),
            h("td", { "data-label": "OS" }, [n.info?.os, n.info?.arch].filter(Boolean).join(" / ") || "—"),
            h("td", { "data-label": "Agent" }, n.info?.agent_version || "—"),
            h("td", { "data-label": "Tools", class: "num" }, String(n.tools?.length ?? 0)),
          ),
        ),
      );
    };
    clear(
      this.main,
      h(
        "section",
        { "aria-labelledby": "nodes-title" },
        h("div", { class: "view-head" }, h("h1", { id: "nodes-title" }, "Nodes"), h("p", { class: "muted" }, "Live status, updated as nodes connect and leave.")),
        filter.element,
        h("div", { class: "card table-wrap" }, table, empty, noMatch),
        addNodePanel(location.origin, this.claims || {}, (nameInput) =>
          this.claims?.role === "admin" ? enrollControls(this.api, nameInput, this.claims.ws) : null,
        ),
      ),
    );
    render();
    this.onNodes(signal, render);
    const timer = setInterval(render, 5000);
    signal.addEventListener("abort", () => clearInterval(timer), { once: true });
  }

  /** The rewound badge, and for admins the button that acknowledges it (POST .../audit/acknowledge). */
  auditAlert(n) {
    const badge = auditBadge(n.audit);
    if (!badge) return null;
    const claims = decodeClaims(this.api?.token || "");
    if (claims.role !== "admin") return h("span", {}, " ", badge);
    const button = h("button", { type: "button", class: "small" }, "Acknowledge");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const done = await this.api.acknowledgeAudit(n.name);
        n.audit = done.audit;
        this.announce(`Audit status of ${n.name} acknowledged.`);
        for (const listener of this.nodeListeners) listener(n);
      } catch (e) {
        button.disabled = false;
        this.announce(`Could not acknowledge: ${errorText(e)}`);
      }
    });
    return h("span", { class: "audit-alert" }, " ", badge, " ", button);
  }

  // ---- node view: tools ----------------------------------------------------------------------

  nodeHeader(name, signal, section) {
    const summary = h("dl", { class: "node-facts" });
    const badge = h("span");
    const render = () => {
      const n = this.nodes.get(name);
      clear(badge, n ? statusBadge(n.status) : statusBadge("unknown"), n ? this.auditAlert(n) : null);
      if (!n) {
        clear(summary, h("p", { class: "warning-box", "data-testid": "unknown-node" }, `No node named ${name} in your workspace. `, h("a", { href: "#/nodes" }, "See all nodes"), "."));
        return;
      }
      const facts = [
        ["Host", n.info?.hostname],
        ["OS", [n.info?.os, n.info?.arch].filter(Boolean).join(" / ")],
        ["Agent", n.info?.agent_version],
        ["Last seen", relativeTime(n.last_seen)],
        ["Round trip", n.rtt_ms == null ? "—" : `${n.rtt_ms.toFixed(1)} ms`],
        ["Workspace", n.workspace],
      ];
      clear(summary, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v || "—"))));
    };
    render();
    this.onNodes(signal, (n) => n.name === name && render());
    const enc = encodeURIComponent(name);
    return h(
      "div",
      { class: "view-head" },
      h("p", { class: "crumbs" }, h("a", { href: "#/nodes" }, "Nodes"), " / ", name),
      h(
        "div",
        { class: "title-row" },
        h("h1", { id: "view-title" }, section === "audit" ? `Audit log of ${name}` : name),
        badge,
        this.claims?.role === "admin"
          ? revokeButton(this.api, name, (text) => {
              this.nodes.delete(name);
              location.hash = "#/nodes";
              this.announce(text);
            })
          : null,
      ),
      summary,
      h(
        "nav",
        { class: "tabs", "aria-label": `Sections of ${name}` },
        h("a", { href: `#/nodes/${enc}`, "aria-current": section === "tools" ? "page" : null }, "Tools"),
        h("a", { href: `#/nodes/${enc}/audit`, "aria-current": section === "audit" ? "page" : null }, "Audit log"),
        h("a", { href: `#/nodes/${enc}/processes`, "aria-current": section === "processes" ? "page" : null }, "Processes"),
        h("a", { href: `#/assistant?node=${enc}` }, "Ask the assistant"),
      ),
    );
  }

  async nodeView(signal, name) {
    const list = h("ul", { class: "tool-list", "aria-label": "Tools" });
    const panel = h("div", { class: "tool-panel card", "aria-live": "off" });
    clear(
      this.main,
      h(
        "section",
        { "aria-labelledby": "view-title" },
        this.nodeHeader(name, signal, "tools"),
        h("div", { class: "tools-layout" }, h("div", { class: "card" }, h("h2", {}, "Tools"), list), panel),
      ),
    );
    clear(panel, h("p", { class: "muted" }, "Loading tools…"));
    let tools;
    try {
      tools = (await this.api.tools(name, signal)).tools;
    } catch (e) {
      if (signal.aborted) return;
      clear(panel, h("p", { class: "error-box", role: "alert" }, `Could not list the tools: ${errorText(e)}`));
      clear(list);
      return;
    }
    if (signal.aborted) return;
    tools.sort((a, b) => a.name.localeCompare(b.name));
    const buttons = new Map();
    const select = (tool) => {
      for (const [n, b] of buttons) b.setAttribute("aria-pressed", String(n === tool.name));
      this.toolPanel(panel, name, tool, signal);
    };
    clear(
      list,
      tools.map((tool) => {
        const button = h(
          "button",
          { type: "button", class: "tool-button", "aria-pressed": "false", "data-tool": tool.name, onclick: () => select(tool) },
          h("span", { class: "tool-name" }, tool.title || tool.name),
          h("code", { class: "small" }, tool.name),
        );
        buttons.set(tool.name, button);
        return h("li", {}, button);
      }),
    );
    if (!tools.length) clear(panel, h("p", { class: "muted" }, "This node offers no tools right now."));
    else select(tools[0]);
  }

  toolPanel(panel, node, tool, viewSignal) {
    const fields = schemaFields(tool.inputSchema, tool.name);
    const timeoutId = uid("timeout");
    const timeout = h("input", { id: timeoutId, type: "number", min: "1", step: "any", inputmode: "decimal", placeholder: "server default" });
    const runButton = h("button", { type: "submit", class: "primary" }, "Run");
    const cancelButton = h("button", { type: "button", class: "danger", disabled: true }, "Cancel");
    const status = h("p", { class: "run-status", role: "status", "aria-live": "polite" });
    const progress = h("pre", { class: "progress-log", hidden: true, "aria-label": "Progress output", tabindex: "0" });
    const output = h("div", { class: "run-output" });
    const hints = tool.annotations || {};
    const form = h(
      "form",
      { novalidate: true, "aria-labelledby": "tool-title" },
      h("h2", { id: "tool-title" }, tool.title || tool.name, " ", h("code", { class: "small" }, tool.name)),
      h("p", { class: "description" }, tool.description || ""),
      h(
        "p",
        { class: "tags" },
        hints.readOnlyHint ? h("span", { class: "tag" }, "read-only") : null,
        hints.destructiveHint ? h("span", { class: "tag tag-warn" }, "may change things") : null,
        hints.openWorldHint ? h("span", { class: "tag" }, "open world") : null,
      ),
      h("fieldset", {}, h("legend", {}, "Arguments ", h("span", { class: "muted small" }, "(* required)")), fields.element),
      h(
        "details",
        { class: "advanced" },
        h("summary", {}, "Options"),
        h("div", { class: "field" }, h("label", { for: timeoutId }, "Timeout (seconds)"), timeout),
      ),
      h("div", { class: "actions" }, runButton, cancelButton),
      status,
      progress,
      output,
    );
    const offline = h("p", { class: "warning-box", role: "status", "data-testid": "node-offline", hidden: true });
    form.insertBefore(offline, form.querySelector(".actions"));
    clear(panel, form);
    let running = null;
    const connected = () => {
      const n = this.nodes.get(node);
      return Boolean(n && n.status !== "disconnected");
    };
    const showReachable = () => {
      const n = this.nodes.get(node);
      const ok = connected();
      offline.hidden = ok;
      offline.textContent = ok ? "" : n ? `${node} is disconnected: a run would fail. It can run tools again once its agent reconnects.` : `No node named ${node} in your workspace.`;
      if (!running) runButton.disabled = !ok;
    };
    showReachable();
    this.onNodes(viewSignal, (n) => n.name === node && showReachable());
    const finish = () => {
      running = null;
      runButton.disabled = !connected();
      cancelButton.disabled = true;
      panel.removeAttribute("aria-busy");
    };
    cancelButton.addEventListener("click", () => {
      if (!running) return;
      running.cancel();
      status.textContent = "Cancelling…";
    });
    viewSignal.addEventListener("abort", () => running?.cancel(), { once: true });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (running) return;
      let args;
      try {
        args = fields.read();
      } catch (e) {
        if (e instanceof FieldError) {
          clear(output);
          clear(progress);
          progress.hidden = true;
          status.dataset.state = "invalid";
          status.textContent = "Fix the highlighted argument, then run again.";
          e.show();
          return;
        }
        throw e;
      }
      const timeoutS = timeout.value ? Number(timeout.value) : undefined;
      runButton.disabled = true;
      cancelButton.disabled = false;
      panel.setAttribute("aria-busy", "true");
      clear(output);
      clear(progress);
      progress.hidden = true;
      status.dataset.state = "running";
      status.textContent = `Running ${tool.name} on ${node}…`;
      const started = performance.now();
      const params = { node, name: tool.name, arguments: args };
      if (timeoutS) params.timeout_s = timeoutS;
      const call = this.rpc.call("tools/call", params, {
        onProgress: (p) => {
          // The node's owner must say yes first (CONTRACT §8 Approval): show the call as waiting, not running.
          if (p.message && p.message.startsWith("waiting for approval on ")) {
            status.dataset.state = "waiting";
            status.textContent = `Waiting for approval: the owner of ${node} must allow ${tool.name} on the node (tray or \`cortex-agent approve\`)…`;
            return;
          }
          status.dataset.state = "running";
          if (p.message) {
            progress.hidden = false;
            progress.append(p.message.endsWith("\n") ? p.message : `${p.message}\n`);
            progress.scrollTop = progress.scrollHeight;
          }
          const amount = p.total ? `${p.progress} / ${p.total}` : !p.message && p.progress ? `${p.progress}` : "";
          status.textContent = `Running ${tool.name} on ${node}…${amount ? ` (progress ${amount})` : ""}`;
        },
      });
      running = { cancel: () => this.rpc.cancel(call.id, "cancelled from the dashboard") };
      try {
        const result = await call.promise;
        const ms = Math.round(performance.now() - started);
        status.dataset.state = result.isError ? "error" : "ok";
        status.textContent = `${tool.name} finished in ${ms} ms${result.isError ? " with an error" : ""}.`;
        progress.hidden = true; // the live output was a preview: the result below holds all of it, once
        output.append(renderResult(result, this.api));
      } catch (e) {
        if (e instanceof RpcError && e.code === CANCELLED) {
          status.dataset.state = "cancelled";
          status.textContent = `${tool.name} was cancelled.`;
        } else {
          status.dataset.state = "error";
          status.textContent = `${tool.name} failed.`;
          output.append(h("p", { class: "error-box", role: "alert" }, errorText(e)));
        }
      } finally {
        finish();
      }
    });
  }

  // ---- audit view ----------------------------------------------------------------------------

  async auditView(signal, name) {
    const toolFilter = h("select", { id: "audit-tool" }, h("option", { value: "" }, "All tools"));
    const statusFilter = h(
      "select",
      { id: "audit-status" },
      h("option", { value: "" }, "Any status"),
      ["ok", "error", "cancelled", "timeout", "denied"].map((s) => h("option", { value: s }, s)),
    );
    const refresh = h("button", { type: "button" }, "Refresh");
    const chain = h("div", { class: "chain", role: "status", "aria-live": "polite", "data-testid": "chain" }, "Checking the chain…");
    const body = h("tbody");
    const pageInfo = h("span", { class: "page-info", "aria-live": "polite" });
    const newer = h("button", { type: "button" }, "← Newer");
    const older = h("button", { type: "button" }, "Older →");
    const table = h(
      "table",
      { class: "audit" },
      h("caption", { class: "visually-hidden" }, `Audit records of ${name}, newest first`),
      h(
        "thead",
        {},
        h("tr", {}, ["Seq", "Time", "Event", "Tool", "Caller", "Status", "Exit", "Duration", "Arguments"].map((c) => h("th", { scope: "col" }, c))),
      ),
      body,
    );
    clear(
      this.main,
      h(
        "section",
        { "aria-labelledby": "view-title" },
        this.nodeHeader(name, signal, "audit"),
        chain,
        h(
          "div",
          { class: "card filters", role: "group", "aria-label": "Filter the audit log" },
          h("div", { class: "field" }, h("label", { for: "audit-tool" }, "Tool"), toolFilter),
          h("div", { class: "field" }, h("label", { for: "audit-status" }, "Status"), statusFilter),
          refresh,
        ),
        h("div", { class: "card table-wrap" }, table, h("nav", { class: "pager", "aria-label": "Audit pages" }, newer, pageInfo, older)),
      ),
    );
    let records = [];
    let requested = new Map(); // request_id -> arguments, so a tool.finished row shows what ran
    let page = 0;
    let brokenSeq = null;
    const argsCell = (r) => {
      const args = r.arguments ?? requested.get(r.request_id);
      if (!args || !Object.keys(args).length) return "—";
      return argsDetails(args, !r.arguments);
    };
    const filtered = () =>
      records.filter((r) => {
        if (toolFilter.value && r.tool !== toolFilter.value) return false;
        if (!statusFilter.value) return true;
        if (statusFilter.value === "denied") return r.event === "tool.denied";
        return r.status === statusFilter.value;
      });
    const render = () => {
      const rows = filtered();
      const pages = Math.max(1, Math.ceil(rows.length / AUDIT_PAGE));
      page = Math.min(page, pages - 1);
      const slice = rows.slice(page * AUDIT_PAGE, (page + 1) * AUDIT_PAGE);
      clear(
        body,
        slice.map((r) =>
          h(
            "tr",
            {
              "data-seq": String(r.seq),
              class: brokenSeq === r.seq ? "row-broken" : r.status && r.status !== "ok" ? `row-${r.status}` : "",
            },
            h("td", { "data-label": "Seq", class: "num" }, brokenSeq === r.seq ? h("strong", { title: "the chain breaks here" }, `⚠ ${r.seq}`) : String(r.seq)),
            h("td", { "data-label": "Time", class: "nowrap" }, clockTime(r.ts)),
            h("td", { "data-label": "Event" }, r.event),
            h("td", { "data-label": "Tool" }, r.tool || "—"),
            h("td", { "data-label": "Caller" }, r.caller ? callerText(r.caller) : "—"),
            h("td", { "data-label": "Status" }, r.status ? h("span", { class: `status status-${r.status}` }, r.status) : "—"),
            h("td", { "data-label": "Exit", class: "num" }, r.exit_code == null ? "—" : String(r.exit_code)),
            h("td", { "data-label": "Duration", class: "num" }, r.duration_ms == null ? "—" : `${r.duration_ms} ms`),
            h("td", { "data-label": "Arguments" }, argsCell(r)),
          ),
        ),
      );
      if (!slice.length) body.append(h("tr", {}, h("td", { colspan: "9", class: "muted" }, records.length ? "No record matches the filter." : "No records yet.")));
      pageInfo.textContent = `Page ${page + 1} of ${pages} · ${rows.length} record${rows.length === 1 ? "" : "s"}`;
      newer.disabled = page === 0;
      older.disabled = page >= pages - 1;
    };
    newer.addEventListener("click", () => {
      page -= 1;
      render();
    });
    older.addEventListener("click", () => {
      page += 1;
      render();
    });
    toolFilter.addEventListener("change", () => {
      page = 0;
      render();
    });
    statusFilter.addEventListener("change", () => {
      page = 0;
      render();
    });
    let lastHeadSeq = null;
    const load = async () => {
      chain.dataset.state = "checking";
      chain.textContent = "Checking the chain…";
      const verifier = new ChainVerifier();
      const all = [];
      let head = null;
      let warning = null;
      let after = 0;
      try {
        for (let chunk = 0; chunk < AUDIT_MAX_CHUNKS; chunk++) {
          const { data, text } = await this.api.audit(name, after, AUDIT_CHUNK, signal);
          head = data.head;
          warning = data.warning || warning;
          const raw = parseLossless(text).records;
          await verifier.feed(raw);
          all.push(...data.records);
          // A page may be cut short to fit one frame (protocol.md §11): the head says whether more follow.
          const last = data.records[data.records.length - 1];
          if (!last || (data.records.length < AUDIT_CHUNK && !(head && last.seq < head.seq))) break;
          after = data.records[data.records.length - 1].seq;
        }
      } catch (e) {
        if (signal.aborted) return;
        chain.dataset.state = "error";
        clear(chain, h("strong", {}, "Could not read the audit log: "), errorText(e));
        return;
      }
      if (signal.aborted) return;
      if (head) lastHeadSeq = head.seq;
      records = all.reverse();
      requested = new Map(records.filter((r) => r.request_id && r.arguments).map((r) => [r.request_id, r.arguments]));
      const tools = [...new Set(records.map((r) => r.tool).filter(Boolean))].sort();
      const chosen = toolFilter.value;
      clear(toolFilter, h("option", { value: "" }, "All tools"), tools.map((t) => h("option", { value: t }, t)));
      toolFilter.value = tools.includes(chosen) ? chosen : "";
      render();
      const parts = [];
      let state;
      brokenSeq = verifier.broken ? verifier.broken.seq : null;
      if (brokenSeq !== null) {
        const index = filtered().findIndex((r) => r.seq === brokenSeq);
        if (index >= 0) page = Math.floor(index / AUDIT_PAGE);
        render();
      }
      if (verifier.broken) {
        state = "broken";
        parts.push(h("strong", {}, `Chain broken at seq ${verifier.broken.seq}`), `: ${verifier.broken.why}.`);
      } else if (head && verifier.count && (head.seq !== verifier.lastSeq || head.hash !== verifier.lastHash)) {
        state = "broken";
        parts.push(h("strong", {}, `Chain broken at seq ${head.seq}`), ": the node's head does not match its last record.");
      } else {
        state = "verified";
        parts.push(
          h("strong", {}, "Chain verified"),
          ` in this browser: ${verifier.count} record${verifier.count === 1 ? "" : "s"}, each hash recomputed and linked${head ? `, head seq ${head.seq}` : ""}.`,
        );
      }
      if (warning) {
        state = state === "broken" ? "broken" : "warning";
        parts.push(h("br"), h("strong", {}, "Head went backwards: "), warning);
      }
      chain.dataset.state = state;
      clear(chain, h("span", { class: "chain-icon", "aria-hidden": "true" }, state === "verified" ? "✔ " : "⚠ "), parts);
    };
    refresh.addEventListener("click", load);
    const liveNote = h("p", { class: "muted small", "data-testid": "audit-live", "aria-live": "off" }, "Updates by itself.");
    chain.after(liveNote);
    await load();
    this.followAudit(signal, name, () => lastHeadSeq, load, liveNote);
  }

  /** The live audit view: poll for records after the head (1 s, doubling to 15 s while quiet); a
   * node.updated event whose audit head moved wakes it at once. New records reload and re-verify. */
  async followAudit(signal, name, headSeq, load, note) {
    let delay = 1000;
    let wake = null;
    this.onNodes(signal, (n) => {
      if (n.name === name && n.audit && headSeq() !== null && n.audit.seq > headSeq()) wake?.();
    });
    while (!signal.aborted) {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay);
        wake = () => clearTimeout(timer) || resolve();
        signal.addEventListener("abort", wake, { once: true });
      });
      if (signal.aborted) return;
      try {
        const { data } = await this.api.audit(name, headSeq() ?? 0, 1, signal);
        note.textContent = `Updates by itself · checked ${new Date().toLocaleTimeString()}`;
        if (data.records.length) {
          await load();
          delay = 1000;
        } else {
          delay = Math.min(delay * 2, 15000);
        }
      } catch {
        if (signal.aborted) return;
        delay = Math.min(delay * 2, 15000);
      }
    }
  }

  // ---- assistant view ------------------------------------------------------------------------

  assistantView(signal, query) {
    const goalId = uid("goal");
    const nodeId = uid("node");
    const stepsId = uid("steps");
    const goal = h("textarea", { id: goalId, rows: "3", required: true, placeholder: "e.g. What operating system does this node run?" });
    const nodeSelect = h("select", { id: nodeId });
    const maxSteps = h("input", { id: `${stepsId}-max`, type: "number", min: "1", max: "50", value: "10", inputmode: "numeric" });
    const runButton = h("button", { type: "submit", class: "primary" }, "Run");
    const cancelButton = h("button", { type: "button", class: "danger", disabled: true }, "Cancel");
    const status = h("p", { class: "run-status", role: "status", "aria-live": "polite" });
    const steps = h("ol", { class: "steps", id: stepsId, "aria-label": "Planner steps", "aria-live": "polite" });
    const fillNodes = () => {
      const chosen = nodeSelect.value || query.get("node") || "";
      const names = [...this.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
      clear(
        nodeSelect,
        h("option", { value: "" }, "Any node of my workspace"),
        names.map((n) => h("option", { value: n.name }, `${n.name} (${n.status})`)),
      );
      nodeSelect.value = names.some((n) => n.name === chosen) ? chosen : "";
    };
    fillNodes();
    this.onNodes(signal, fillNodes);
    const form = h(
      "form",
      { class: "card assistant-form", novalidate: true },
      h("div", { class: "field" }, h("label", { for: goalId }, "Goal ", h("span", { class: "required", "aria-hidden": "true" }, "*")), goal),
      h(
        "div",
        { class: "row" },
        h("div", { class: "field" }, h("label", { for: nodeId }, "Node"), nodeSelect),
        h("div", { class: "field" }, h("label", { for: `${stepsId}-max` }, "Max steps"), maxSteps),
      ),
      h("div", { class: "actions" }, runButton, cancelButton),
      status,
    );
    clear(
      this.main,
      h(
        "section",
        { "aria-labelledby": "assistant-title" },
        h(
          "div",
          { class: "view-head" },
          h("h1", { id: "assistant-title" }, "Assistant"),
          h("p", { class: "muted" }, "Give the planner a goal; it uses the nodes' tools and shows every step as it happens."),
        ),
        form,
        steps,
      ),
    );
    let run = null;
    cancelButton.addEventListener("click", () => run?.abort());
    signal.addEventListener("abort", () => run?.abort(), { once: true });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (run) return;
      if (!goal.value.trim()) {
        status.textContent = "Type a goal first.";
        goal.setAttribute("aria-invalid", "true");
        goal.focus();
        return;
      }
      goal.removeAttribute("aria-invalid");
      const body = { goal: goal.value.trim() };
      if (nodeSelect.value) body.node = nodeSelect.value;
      if (maxSteps.value) body.max_steps = Number(maxSteps.value);
      run = new AbortController();
      runButton.disabled = true;
      cancelButton.disabled = false;
      clear(steps);
      status.dataset.state = "running";
      status.textContent = "Planning…";
      let ended = false;
      try {
        for await (const { event, data } of this.api.stream("POST", "/api/v1/planner/runs", { body, signal: run.signal })) {
          const last = steps.lastElementChild;
          if (event === "done" && last?.dataset.event === "message" && last.dataset.text === data?.answer) {
            last.remove(); // the final message is the answer: show it once, as the answer
          }
          steps.append(this.planStep(event, data));
          steps.lastElementChild.scrollIntoView({ block: "nearest" });
          if (event === "done") {
            ended = true;
            status.dataset.state = "ok";
            status.textContent = "The planner finished.";
          } else if (event === "error") {
            ended = true;
            status.dataset.state = "error";
            status.textContent = "The planner stopped with an error.";
          } else if (event === "tool_call") {
            status.textContent = `Running ${data?.tool || data?.name || "a tool"}…`;
          }
        }
        if (run.signal.aborted) throw new DOMException("cancelled", "AbortError");
        if (!ended) {
          status.dataset.state = "error";
          status.textContent = "The planner's stream ended without an answer.";
        }
      } catch (e) {
        if (run.signal.aborted) {
          // Dropping the stream is the cancel: the server cancels the run and its running tool call.
          status.dataset.state = "cancelled";
          status.textContent = "Run cancelled.";
          steps.append(h("li", { class: "step step-cancelled" }, h("p", {}, h("strong", {}, "Cancelled"), " — the run was stopped from the dashboard.")));
        } else if (e instanceof ApiError && e.status === 503) {
          status.dataset.state = "error";
          status.textContent = "The planner is not configured on this server.";
          steps.append(
            h(
              "li",
              { class: "step step-unconfigured", "data-testid": "planner-unconfigured" },
              h("h2", {}, "No language model is configured"),
              h("p", {}, e.message),
              h("p", { class: "hint" }, "Node tools still work from each node's Tools tab."),
            ),
          );
        } else {
          status.dataset.state = "error";
          status.textContent = "The run failed.";
          steps.append(h("li", { class: "step step-error" }, h("p", { role: "alert" }, errorText(e))));
        }
      } finally {
        run = null;
        runButton.disabled = false;
        cancelButton.disabled = true;
      }
    });
    goal.focus();
  }

  planStep(event, data) {
    const d = data && typeof data === "object" ? data : { text: data };
    const stepNo = d.step !== undefined ? h("span", { class: "muted small" }, ` step ${d.step}`) : null;
    if (event === "tool_call") {
      const tool = d.tool ?? d.name ?? d.tool_name ?? "tool";
      const node = d.node ? `${d.node} · ` : "";
      const args = d.arguments ?? d.args ?? d.input ?? {};
      return h(
        "li",
        { class: "step step-tool-call", "data-event": event },
        h("p", {}, h("strong", {}, "Tool call "), h("code", {}, `${node}${tool}`), stepNo),
        h("pre", { class: "json" }, typeof args === "string" ? args : formatJson(args)),
      );
    }
    if (event === "step") {
      return h("li", { class: "step step-marker", "data-event": event }, h("span", { class: "muted small" }, `Step ${d.step}`));
    }
    if (event === "tool_result") {
      // The planner sends {name, is_error, text, images:[{mimeType, data}], structured?}; a plain
      // CallToolResult (content/isError) is accepted as well.
      const result =
        d.result ??
        (d.content
          ? d
          : {
              content: [
                ...(d.text ? [{ type: "text", text: d.text }] : []),
                ...(d.images || []).map((img) => ({ type: "image", mimeType: img.mimeType, data: img.data })),
              ],
              structuredContent: d.structured,
              isError: Boolean(d.is_error ?? d.isError),
            });
      const tool = d.tool ?? (typeof d.name === "string" ? d.name.replace("__", " · ") : undefined);
      return h(
        "li",
        { class: "step step-tool-result", "data-event": event },
        h("p", {}, h("strong", {}, "Tool result"), tool ? [" of ", h("code", {}, tool)] : null, stepNo),
        result ? renderResult(result, this.api) : h("pre", { class: "json" }, formatJson(d)),
      );
    }
    if (event === "message" || event === "done") {
      const isAnswer = event === "done";
      let text = d.answer ?? d.text ?? d.content ?? d.message;
      if (isAnswer && (text === null || text === undefined)) {
        text = d.reason === "max_steps" ? `Stopped after ${d.steps} steps without a final answer.` : "(no answer)";
      }
      return h(
        "li",
        { class: `step step-${isAnswer ? "answer" : "message"}`, "data-event": event, "data-text": typeof text === "string" ? text : null },
        h("p", {}, h("strong", {}, isAnswer ? "Answer" : "Message"), stepNo),
        typeof text === "string" ? h("div", { class: "message-text" }, text) : text === undefined ? null : h("pre", { class: "json" }, formatJson(text)),
      );
    }
    if (event === "error") {
      return h(
        "li",
        { class: "step step-error", "data-event": event },
        h("p", { role: "alert" }, h("strong", {}, "Error "), d.error ? h("code", {}, d.error) : null, " ", d.message || ""),
      );
    }
    return h(
      "li",
      { class: "step step-other", "data-event": event },
      h("p", {}, h("strong", {}, event.replace(/_/g, " ")), stepNo),
      Object.keys(d).length > 1 || d.step === undefined ? h("pre", { class: "json" }, formatJson(d)) : null,
    );
  }
}

new Dashboard().start();
