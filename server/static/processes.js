// The Processes tab of a node: its background processes (process_list), one process's live output
// (long-polling process_read with wait_s), input to it (process_write) and process_kill.
//
// Where it sits: a view module of the dashboard; app.js routes #/nodes/<name>/processes here and
// hands over itself (for the API client, the main element and the node header). Every tool call goes
// through the same REST endpoint as the Tools tab, so the node audits each one. Every loop here stops
// when the view's AbortSignal fires (the user navigated away).

import { clear, h } from "./dom.js";

const LIST_EVERY_MS = 2000;
const READ_WAIT_S = 10;
const READ_MAX_BYTES = 65536;
const OUTPUT_KEEP_CHARS = 200_000;

function message(error) {
  return error?.message || String(error);
}

function resultText(result) {
  return (result.content || []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

class ProcessesView {
  constructor(app, signal, node) {
    this.app = app;
    this.api = app.api;
    this.signal = signal;
    this.node = node;
    this.selected = null;
    this.follow = null; // AbortController of the output loop of the selected process
  }

  call(tool, args, timeoutS, signal = this.signal) {
    return this.api.callTool(this.node, tool, args, timeoutS, signal);
  }

  render() {
    this.rows = h("tbody");
    this.listStatus = h("p", { class: "muted", role: "status" }, "Loading processes…");
    this.table = h(
      "table",
      { class: "processes" },
      h("caption", { class: "visually-hidden" }, `Background processes of ${this.node}`),
      h("thead", {}, h("tr", {}, ...["Process", "Name", "PID", "State", "Output", "Started", ""].map((t) => h("th", { scope: "col" }, t)))),
      this.rows,
    );
    this.command = h("input", { id: "proc-command", type: "text", required: true, placeholder: "python3 -m http.server 8080", autocomplete: "off" });
    this.name = h("input", { id: "proc-name", type: "text", placeholder: "optional label", autocomplete: "off" });
    this.pty = h("input", { id: "proc-pty", type: "checkbox" });
    this.startError = h("p", { class: "field-error", role: "alert" });
    const form = h(
      "form",
      { class: "card", "aria-labelledby": "proc-start-title" },
      h("h2", { id: "proc-start-title" }, "Start a process"),
      h("div", { class: "field" }, h("label", { for: "proc-command" }, "Command"), this.command),
      h("div", { class: "field" }, h("label", { for: "proc-name" }, "Name"), this.name),
      h("div", { class: "process-check" }, this.pty, h("label", { for: "proc-pty" }, "Run on a terminal (pty)")),
      this.startError,
      h("button", { type: "submit" }, "Start"),
    );
    form.addEventListener("submit", (event) => { event.preventDefault(); this.start(); });
    this.detail = h("section", { class: "card process-detail", "aria-label": "Process output", hidden: true });
    clear(
      this.app.main,
      h(
        "section",
        { "aria-labelledby": "view-title", class: "processes-view" },
        this.app.nodeHeader(this.node, this.signal, "processes"),
        form,
        h("div", { class: "card table-wrap" }, h("h2", {}, "Processes"), this.listStatus, this.table),
        this.detail,
      ),
    );
    this.pollList();
  }

  async start() {
    const command = this.command.value.trim();
    this.startError.textContent = "";
    if (!command) { this.startError.textContent = "command is required"; return; }
    const args = { command, pty: this.pty.checked };
    if (this.name.value.trim()) args.name = this.name.value.trim();
    try {
      const result = await this.call("process_start", args, 30);
      if (result.isError) { this.startError.textContent = resultText(result); return; }
      this.command.value = "";
      await this.refreshList();
      this.select(result.structuredContent.process_id);
    } catch (e) {
      if (!this.signal.aborted) this.startError.textContent = message(e);
    }
  }

  async pollList() {
    while (!this.signal.aborted) {
      await this.refreshList();
      await pause(LIST_EVERY_MS, this.signal);
    }
  }

  async refreshList() {
    let processes;
    try {
      const result = await this.call("process_list", {}, 10);
      if (result.isError) throw new Error(resultText(result));
      processes = result.structuredContent.processes;
    } catch (e) {
      if (!this.signal.aborted) this.listStatus.textContent = `Could not list the processes: ${message(e)}`;
      return;
    }
    this.processes = new Map(processes.map((p) => [p.process_id, p]));
    this.listStatus.textContent = processes.length ? "" : "No background processes on this node.";
    this.table.hidden = processes.length === 0;
    clear(this.rows, processes.map((p) => {
      const open = h("button", { type: "button", class: "link", "aria-label": `Open ${p.process_id}` }, "Open");
      open.addEventListener("click", () => this.select(p.process_id));
      return h(
        "tr",
        { "data-process": p.process_id, "aria-selected": p.process_id === this.selected ? "true" : null },
        h("td", {}, h("code", {}, p.process_id)),
        h("td", { class: "wrap" }, p.name),
        h("td", {}, String(p.pid)),
        h("td", {}, h("span", { class: `badge ${p.running ? "connected" : "disconnected"}` }, p.running ? "running" : `exited ${p.exit_code}`)),
        h("td", {}, `${p.output_bytes.toLocaleString()} B`),
        h("td", {}, new Date(p.started_at).toLocaleTimeString()),
        h("td", {}, open),
      );
    }));
    if (this.selected) this.updateState(this.processes.get(this.selected));
  }

  select(processId) {
    this.follow?.abort();
    this.follow = new AbortController();
    const signal = AbortSignal.any ? AbortSignal.any([this.signal, this.follow.signal]) : this.follow.signal;
    this.signal.addEventListener("abort", () => this.follow?.abort(), { once: true });
    this.selected = processId;
    const info = this.processes?.get(processId);
    this.output = h("pre", { class: "process-output", tabindex: "0", "aria-label": `Output of ${processId}`, "aria-live": "off" });
    this.state = h("p", { class: "muted", role: "status" });
    this.input = h("input", { id: "proc-input", type: "text", autocomplete: "off", placeholder: "a line for its stdin" });
    this.actionError = h("p", { class: "field-error", role: "alert" });
    const send = h("button", { type: "submit" }, "Send");
    const eof = h("button", { type: "button" }, "Send end of input");
    const kill = h("button", { type: "button", class: "danger" }, "Kill");
    const inputForm = h(
      "form",
      { class: "process-input" },
      h("label", { for: "proc-input" }, "Input"),
      this.input,
      send,
      eof,
      kill,
    );
    inputForm.addEventListener("submit", (event) => { event.preventDefault(); this.write(this.input.value + "\n", false); });
    eof.addEventListener("click", () => this.write("", true));
    kill.addEventListener("click", () => this.kill());
    clear(
      this.detail,
      h("h2", {}, "Output of ", h("code", {}, processId), info ? ` (${info.name})` : ""),
      this.state,
      this.output,
      inputForm,
      this.actionError,
    );
    this.detail.hidden = false;
    for (const row of this.rows.querySelectorAll("tr")) {
      row.setAttribute("aria-selected", row.dataset.process === processId ? "true" : "false");
    }
    this.updateState(info);
    this.followOutput(processId, signal);
  }

  updateState(info) {
    if (!this.state || !info) return;
    this.state.textContent = info.running
      ? `running · pid ${info.pid} · ${info.output_bytes.toLocaleString()} bytes of output`
      : `exited with code ${info.exit_code} · ${info.output_bytes.toLocaleString()} bytes of output`;
  }

  append(text) {
    if (!text) return;
    const atBottom = this.output.scrollTop + this.output.clientHeight >= this.output.scrollHeight - 4;
    let all = this.output.textContent + text;
    if (all.length > OUTPUT_KEEP_CHARS) all = "…\n" + all.slice(all.length - OUTPUT_KEEP_CHARS);
    this.output.textContent = all;
    if (atBottom) this.output.scrollTop = this.output.scrollHeight;
  }

  async followOutput(processId, signal) {
    let offset = 0;
    while (!signal.aborted) {
      let data;
      try {
        const result = await this.call(
          "process_read",
          { process_id: processId, offset, wait_s: READ_WAIT_S, max_bytes: READ_MAX_BYTES },
          READ_WAIT_S + 20,
          signal,
        );
        if (result.isError) throw new Error(resultText(result));
        data = result.structuredContent;
      } catch (e) {
        if (signal.aborted) return;
        this.actionError.textContent = `Could not read the output: ${message(e)}`;
        await pause(LIST_EVERY_MS, signal);
        continue;
      }
      if (data.dropped_bytes) this.append(`\n[… ${data.dropped_bytes} bytes no longer kept …]\n`);
      this.append(data.output);
      offset = data.next_offset;
      if (!data.running && data.next_offset === data.offset) {
        this.append(`\n[exited with code ${data.exit_code}]\n`);
        this.refreshList();
        return;
      }
    }
  }

  async write(text, closeStdin) {
    this.actionError.textContent = "";
    try {
      const result = await this.call("process_write", { process_id: this.selected, input: text, close_stdin: closeStdin }, 30);
      if (result.isError) this.actionError.textContent = resultText(result);
      else this.input.value = "";
    } catch (e) {
      if (!this.signal.aborted) this.actionError.textContent = message(e);
    }
  }

  async kill() {
    this.actionError.textContent = "";
    try {
      const result = await this.call("process_kill", { process_id: this.selected }, 30);
      if (result.isError) this.actionError.textContent = resultText(result);
      await this.refreshList();
    } catch (e) {
      if (!this.signal.aborted) this.actionError.textContent = message(e);
    }
  }
}

/** Render the Processes tab of `node` into app.main; everything stops when `signal` aborts. */
export function processesView(app, signal, node) {
  new ProcessesView(app, signal, node).render();
}
