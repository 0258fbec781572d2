// Pieces of the dashboard that a newcomer meets first: who am I and until when, why a token was
// refused, full timestamps, the node search/filter bar, the "Add a node" panel with the commands to
// copy, and expandable arguments. Imported by app.js; plain ES module, DOM built with dom.js's h().
//
// Invariants:
//  1. Nothing here holds a token: the panel's commands never contain one (a credential is printed by
//     `cortex-server enroll-node` on the server, and pasted on the node's stdin).
//  2. Times are shown with date, time and time zone; the exact ISO value is in the title.

import { h } from "./dom.js";

/** "in 42 min" / "expired 3 h ago" for a JWT `exp` (seconds since the epoch). */
export function expiryText(exp, now = Date.now()) {
  if (typeof exp !== "number") return "no expiry";
  const left = exp * 1000 - now;
  const span = (ms) => {
    const s = Math.abs(ms) / 1000;
    if (s < 120) return `${Math.round(s)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${Math.round(s / 86400)} days`;
  };
  return left >= 0 ? `expires in ${span(left)}` : `expired ${span(left)} ago`;
}

/** What to tell the user when the server answers 401 to their token. */
export function tokenRefusedMessage(claims, everAccepted) {
  const renew = "Get a new one with `cortex-server issue-token NAME --workspace W` and sign in again.";
  if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) {
    return `Your token expired at ${fullTimeText(new Date(claims.exp * 1000).toISOString())}. ${renew}`;
  }
  if (!claims.sub) return `That is not a Cortex user token. ${renew}`;
  if (!everAccepted) {
    return `The server refused the token for ${claims.sub}: it is invalid, revoked, from another server, or not a user token. ${renew}`;
  }
  return `The server stopped accepting the token for ${claims.sub} (revoked, or the server's key changed). ${renew}`;
}

/** "2026-12-01 11:30:02 UTC": the local date and time, compact, with the zone's short name. */
export function fullTimeText(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  const zone =
    new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(d).find((p) => p.type === "timeZoneName")?.value || "";
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${date} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${zone}`.trim();
}

/** A timestamp with date, time and zone (rule 2). */
export function fullTime(iso) {
  if (!iso) return "—";
  return h("time", { datetime: iso, title: iso, class: "nowrap" }, fullTimeText(iso));
}

/** Arguments as one line, expandable to the whole pretty-printed JSON (never cut off for good). */
export function argsDetails(args, muted) {
  const text = JSON.stringify(args);
  const short = text.length > 48 ? `${text.slice(0, 45)}…` : text;
  if (short === text) return h("code", { class: `args${muted ? " muted" : ""}` }, text);
  return h(
    "details",
    { class: "args-details" },
    h("summary", {}, h("code", { class: `args${muted ? " muted" : ""}` }, short)),
    h("pre", { class: "json" }, JSON.stringify(args, null, 2)),
  );
}

/** The node search box and status filter; `onChange()` re-renders. `.matches(node)` filters. */
export function nodeFilterBar(onChange) {
  const search = h("input", {
    type: "search",
    id: "node-search",
    placeholder: "Search nodes by name, host or OS",
    "aria-label": "Search nodes",
    autocomplete: "off",
  });
  const status = h(
    "select",
    { id: "node-status-filter", "aria-label": "Filter by status" },
    h("option", { value: "" }, "Any status"),
    ["connected", "unhealthy", "disconnected"].map((s) => h("option", { value: s }, s)),
  );
  search.addEventListener("input", onChange);
  status.addEventListener("change", onChange);
  const element = h("div", { class: "filter-bar" }, search, status);
  const matches = (n) => {
    if (status.value && n.status !== status.value) return false;
    const q = search.value.trim().toLowerCase();
    if (!q) return true;
    return [n.name, n.workspace, n.info?.hostname, n.info?.os].some((v) => v && String(v).toLowerCase().includes(q));
  };
  return { element, matches, active: () => Boolean(search.value.trim() || status.value) };
}

function copyBlock(label, text) {
  const code = h("pre", { class: "command" }, text);
  const button = h("button", { type: "button", class: "copy" }, "Copy");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      // No clipboard permission (an http page): select the text so Ctrl-C copies it.
      const range = document.createRange();
      range.selectNodeContents(code);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Selected: press Ctrl-C";
    }
  });
  return h("div", { class: "copy-block" }, h("p", { class: "step-label" }, label), h("div", { class: "command-row" }, code, button));
}

/** The "Add a node" panel: the three commands, with the user's workspace and this server filled in. */
export function addNodePanel(origin, claims, extra) {
  const nameInput = h("input", { id: "new-node-name", value: "laptop", pattern: "[a-z0-9][a-z0-9-]{0,62}", "aria-label": "Node name" });
  const ws = claims.ws || "W";
  const steps = h("div", { class: "add-node-steps" });
  const render = () => {
    const name = nameInput.value.trim() || "NAME";
    steps.replaceChildren(
      copyBlock("1. On the server: enroll the node (prints its credential once)", `cortex-server enroll-node ${name} --workspace ${ws}`),
      copyBlock("2. On the node: store the credential (paste it on stdin; the server checks it)", `cortex-agent login --server ${origin} --name ${name}`),
      copyBlock("3. On the node: run the agent (or `cortex-agent tray` for a tray icon)", "cortex-agent run"),
    );
  };
  nameInput.addEventListener("input", render);
  render();
  const more = typeof extra === "function" ? extra(nameInput) : extra;
  return h(
    "details",
    { class: "card add-node", id: "add-node" },
    h("summary", {}, h("strong", {}, "Add a node")),
    h("div", { class: "field" }, h("label", { for: "new-node-name" }, "Node name"), nameInput),
    steps,
    more || null,
  );
}
