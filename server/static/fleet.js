// Running a fleet from the dashboard: the admin's "Enroll now" (credential shown once), "Revoke node",
// and the Recent calls view across the workspace's nodes (GET /api/v1/calls, kept by the server).
// Imported by app.js; uses api.js's generic `json()` only.
//
// Invariants:
//  1. A credential returned by enrolment is shown once, in this panel, and kept nowhere (not in
//     storage, not in the URL); leaving the view forgets it.
//  2. The recent-calls view refreshes itself: every 2 s, doubling to 15 s while nothing is new.

import { h } from "./dom.js";
import { argsDetails, fullTime } from "./onboarding.js";

/** The admin's part of "Add a node": enroll by REST and show the credential once (rule 1). */
export function enrollControls(api, nameInput, workspace) {
  const button = h("button", { type: "button", class: "primary", "data-testid": "enroll-now" }, "Enroll now");
  const out = h("div", { class: "enroll-out", role: "status", "aria-live": "polite" });
  button.addEventListener("click", async () => {
    const name = nameInput.value.trim();
    button.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, `Enrolling ${name}…`));
    try {
      const data = await api.json("POST", "/api/v1/nodes", { body: { name, workspace } });
      const secret = h("pre", { class: "command", "data-testid": "credential" }, data.credential);
      out.replaceChildren(
        h(
          "div",
          { class: "credential-once" },
          h("p", {}, h("strong", {}, `Node ${data.name} enrolled in workspace ${data.workspace}.`), " Its credential is shown only now: copy it to the node and paste it on the stdin of step 2."),
          secret,
        ),
      );
    } catch (e) {
      out.replaceChildren(h("p", { class: "error-box", role: "alert" }, `Could not enroll ${name}: ${e.message}`));
    } finally {
      button.disabled = false;
    }
  });
  return h("div", { class: "enroll-admin" }, h("p", { class: "muted small" }, "As an admin you can enroll it from here instead of step 1:"), button, out);
}

/** "Revoke node" for admins: confirm, DELETE, then back to the node list. */
export function revokeButton(api, name, onDone) {
  const button = h("button", { type: "button", class: "danger", "data-testid": "revoke" }, "Revoke node");
  button.addEventListener("click", async () => {
    if (!confirm(`Revoke ${name}? Its credential stops working at once and its connection is closed.`)) return;
    button.disabled = true;
    try {
      await api.json("DELETE", `/api/v1/nodes/${encodeURIComponent(name)}`);
      onDone(`Node ${name} revoked.`);
    } catch (e) {
      button.disabled = false;
      button.after(h("p", { class: "error-box", role: "alert" }, `Could not revoke ${name}: ${e.message}`));
    }
  });
  return button;
}

const OUTCOME = { ok: "ok", tool_error: "error", timeout: "timeout", cancelled: "cancelled", error: "failed" };

/** The Recent calls view (rule 2). */
export async function recentCallsView(main, api, signal) {
  const body = h("tbody");
  const note = h("p", { class: "muted small", "data-testid": "calls-live" }, "Updates by itself.");
  const empty = h("p", { class: "muted empty", hidden: true }, "No calls yet. Run a tool from a node's Tools tab, the assistant, `cortex call`, or an MCP client.");
  const table = h(
    "table",
    { class: "audit calls" },
    h("caption", { class: "visually-hidden" }, "Recent tool calls across your workspace's nodes, newest first"),
    h("thead", {}, h("tr", {}, ["Time", "Node", "Tool", "Caller", "Outcome", "Duration", "Arguments", "Result"].map((c) => h("th", { scope: "col" }, c)))),
    body,
  );
  main.replaceChildren(
    h(
      "section",
      { "aria-labelledby": "calls-title" },
      h("div", { class: "view-head" }, h("h1", { id: "calls-title" }, "Recent calls"), h("p", { class: "muted" }, "The last tool calls made through this server to your workspace's nodes, from every surface.")),
      note,
      h("div", { class: "card table-wrap" }, table, empty),
    ),
  );
  let newest = null;
  const render = (calls) => {
    empty.hidden = calls.length > 0;
    table.hidden = calls.length === 0;
    body.replaceChildren(
      ...calls.map((c) => {
        const outcome = OUTCOME[c.outcome] || c.outcome;
        const enc = encodeURIComponent(c.node);
        return h(
          "tr",
          { "data-call": String(c.id), class: outcome === "ok" ? "" : `row-${outcome}` },
          h("td", { "data-label": "Time" }, fullTime(new Date(c.started_at * 1000).toISOString())),
          h("td", { "data-label": "Node" }, h("a", { href: `#/nodes/${enc}` }, c.node)),
          h("td", { "data-label": "Tool" }, c.tool),
          h("td", { "data-label": "Caller" }, h("span", { class: "caller", title: `${c.caller.sub}@${c.caller.ws}` }, `${c.caller.sub}@${c.caller.ws}`)),
          h("td", { "data-label": "Outcome" }, h("span", { class: `status status-${outcome}` }, outcome)),
          h("td", { "data-label": "Duration", class: "num" }, `${Math.round(c.duration_ms)} ms`),
          h("td", { "data-label": "Arguments" }, Object.keys(c.arguments || {}).length ? argsDetails(c.arguments, false) : "—"),
          h(
            "td",
            { "data-label": "Result" },
            c.result == null ? "—" : h("details", { class: "args-details" }, h("summary", {}, h("code", { class: "args" }, c.result.split("\n")[0].slice(0, 40) || "(empty)")), h("pre", { class: "json" }, c.result)),
            " ",
            h(
              "a",
              { href: `#/nodes/${enc}/audit`, class: "small", "data-testid": "audit-link" },
              c.audit?.finished_seq
                ? `audit #${c.audit.requested_seq}–#${c.audit.finished_seq}`
                : c.audit?.requested_seq ? `audit #${c.audit.requested_seq}` : "audit",
            ),
          ),
        );
      }),
    );
  };
  let delay = 2000;
  while (!signal.aborted) {
    try {
      const data = await api.json("GET", "/api/v1/calls?limit=200", { signal });
      const top = data.calls[0]?.id ?? null;
      if (top !== newest || newest === null) render(data.calls);
      delay = top !== newest ? 2000 : Math.min(delay * 2, 15000);
      newest = top;
      note.textContent = `Updates by itself · checked ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (signal.aborted) return;
      note.textContent = `Could not load the calls: ${e.message}`;
      delay = Math.min(delay * 2, 15000);
    }
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, delay);
      signal.addEventListener("abort", () => clearTimeout(timer) || resolve(), { once: true });
    });
  }
}
