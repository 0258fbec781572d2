// Small DOM helpers shared by the dashboard's views: element building and result rendering.
// Text always goes in as text nodes (never innerHTML), so tool output cannot inject markup.

/** h("div", {class: "x", onclick: fn}, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "value" || (key in node && typeof value !== "string")) node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

let idCounter = 0;
export function uid(prefix = "id") {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

export function formatJson(value) {
  return JSON.stringify(value, null, 2);
}

export function relativeTime(iso, now = Date.now()) {
  if (!iso) return "never";
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  if (!Number.isFinite(seconds)) return iso;
  if (seconds < 5) return "just now";
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

export function timeElement(iso) {
  return h("time", { datetime: iso || "", title: iso ? new Date(iso).toLocaleString() : "" }, relativeTime(iso));
}

/**
 * An MCP CallToolResult as DOM: text blocks, images inline, resource links, structured JSON,
 * isError highlighted. `api` is used to fetch artifact links with the token.
 */
export function renderResult(result, api) {
  const isError = Boolean(result?.isError);
  const box = h("div", { class: `result${isError ? " result-error" : ""}`, "data-testid": "result" });
  box.append(
    h("p", { class: "result-head" }, isError ? h("strong", {}, "The tool reported an error") : h("strong", {}, "Result")),
  );
  // A text block that only repeats the structured content (MCP's compatibility copy) is shown once,
  // as the structured JSON below.
  for (const item of result?.content || []) {
    if (!repeatsStructured(item, result.structuredContent)) box.append(renderContent(item, api));
  }
  const artifact = result?._meta?.["cortex/artifact"];
  if (artifact?.uri) box.append(renderArtifactOffer(artifact, api));
  if (result && result.structuredContent !== undefined && result.structuredContent !== null) {
    box.append(
      h(
        "details",
        // Folded when text blocks already show the output: each piece of output is shown once.
        { class: "structured", open: !box.querySelector("pre.text-output, figure") },
        h("summary", {}, "Structured content"),
        h("pre", { class: "json" }, formatJson(result.structuredContent)),
      ),
    );
  }
  if (!result?.content?.length && result?.structuredContent == null) box.append(h("p", { class: "muted" }, "(empty)"));
  return box;
}

/**
 * A result too large for one message (spec/protocol.md §11): the server sent its preview and a link to
 * the whole CallToolResult; offer the whole as a download (fetched with the token, saved as JSON).
 */
export function renderArtifactOffer(ref, api) {
  const box = h("p", { class: "artifact-offer" });
  const size = ref.bytes ? ` (${(ref.bytes / 1048576).toFixed(1)} MiB)` : "";
  const button = h("button", { type: "button", "data-testid": "artifact-download" }, `Download the whole result${size}`);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const url = await api.artifactUrl(ref.uri);
      const link = h("a", { href: url, download: `result-${String(ref.id || "").slice(0, 8)}.json` }, "result.json");
      box.append(" ", link);
      link.click();
    } catch (e) {
      box.append(h("span", { class: "error-box", role: "alert" }, String(e?.message || e)));
    } finally {
      button.disabled = false;
    }
  });
  box.append(button);
  return box;
}

function repeatsStructured(item, structured) {
  if (item?.type !== "text" || structured === undefined || structured === null) return false;
  try {
    return JSON.stringify(JSON.parse(item.text)) === JSON.stringify(structured);
  } catch {
    return false;
  }
}

export function renderContent(item, api) {
  if (item?.type === "text") return h("pre", { class: "text-output" }, item.text);
  if (item?.type === "image") {
    return h(
      "figure",
      { class: "image-output" },
      h("img", { src: `data:${item.mimeType};base64,${item.data}`, alt: "Image returned by the tool" }),
      h("figcaption", {}, item.mimeType),
    );
  }
  if (item?.type === "resource_link" && item.uri) {
    const figure = h("figure", { class: "image-output" });
    const link = h("a", { href: "#", class: "artifact" }, item.name || item.uri);
    link.addEventListener("click", async (ev) => {
      ev.preventDefault();
      const url = await api.artifactUrl(item.uri);
      if ((item.mimeType || "").startsWith("image/")) figure.append(h("img", { src: url, alt: item.name || "artifact" }));
      else window.open(url, "_blank", "noopener");
    });
    figure.append(link);
    return figure;
  }
  if (item?.type === "resource" && item.resource) {
    const r = item.resource;
    if (r.text !== undefined) return h("pre", { class: "text-output" }, r.text);
    return h("p", {}, `Binary resource ${r.uri || ""} (${r.mimeType || "unknown type"})`);
  }
  return h("pre", { class: "json" }, formatJson(item));
}
