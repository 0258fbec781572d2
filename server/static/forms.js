// A form generated from a tool's JSON Schema `inputSchema`, and the arguments read back from it.
//
// Field per property type: string → text input (textarea for long text), number/integer → number
// input, boolean → checkbox, enum → select, object/array/anything else → JSON textarea. Required
// properties are marked (visually and with aria-required); empty optional fields are left out of the
// arguments so the tool's defaults apply. The server validates again: this is a convenience.

import { h, uid } from "./dom.js";

const LONG_TEXT = /^(content|stdin|text|old_text|new_text|body|script|code)$/;

function mainType(schema) {
  const t = schema?.type;
  if (Array.isArray(t)) return t.find((x) => x !== "null") || "string";
  if (t) return t;
  if (schema?.enum) return "enum";
  return "json";
}

/** Build the fields of `schema` into a fieldset; returns {element, read()} where read() gives args or throws. */
export function schemaFields(schema, toolName) {
  const props = schema?.properties || {};
  const required = new Set(schema?.required || []);
  const readers = [];
  const fields = h("div", { class: "fields" });
  for (const [name, prop] of Object.entries(props)) {
    const id = uid(`f-${toolName}-${name}`);
    const hintId = `${id}-hint`;
    const errorId = `${id}-error`;
    const isRequired = required.has(name);
    const type = prop.enum ? "enum" : mainType(prop);
    const hint = [prop.description, prop.default !== undefined ? `Default: ${JSON.stringify(prop.default)}.` : null]
      .filter(Boolean)
      .join(" ");
    const label = h(
      "label",
      { for: id },
      h("span", { class: "field-name" }, prop.title || name),
      isRequired ? h("span", { class: "required", "aria-hidden": "true" }, " *") : null,
      isRequired ? h("span", { class: "visually-hidden" }, " (required)") : null,
      prop.title && prop.title !== name ? h("code", { class: "field-key" }, name) : null,
    );
    const common = {
      id,
      name,
      "aria-describedby": `${hintId} ${errorId}`,
      "aria-required": isRequired ? "true" : null,
      required: isRequired,
    };
    let control;
    let read;
    if (type === "enum") {
      control = h(
        "select",
        common,
        isRequired ? null : h("option", { value: "" }, "(default)"),
        prop.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))),
      );
      if (prop.default !== undefined) control.value = JSON.stringify(prop.default);
      read = () => (control.value === "" ? undefined : JSON.parse(control.value));
    } else if (type === "boolean") {
      control = h("input", { ...common, type: "checkbox", required: false, checked: prop.default === true });
      const initial = prop.default === true;
      read = () => (isRequired || control.checked !== initial ? control.checked : undefined);
    } else if (type === "integer" || type === "number") {
      control = h("input", {
        ...common,
        type: "number",
        inputmode: type === "integer" ? "numeric" : "decimal",
        step: type === "integer" ? "1" : "any",
        min: prop.minimum !== undefined ? String(prop.minimum) : null,
        max: prop.maximum !== undefined ? String(prop.maximum) : null,
        placeholder: prop.default !== undefined ? String(prop.default) : "",
      });
      read = () => {
        if (control.value.trim() === "") return undefined;
        const n = Number(control.value);
        if (!Number.isFinite(n) || (type === "integer" && !Number.isInteger(n))) {
          throw new FieldError(control, errorId, `${name} must be ${type === "integer" ? "an integer" : "a number"}`);
        }
        return n;
      };
    } else if (type === "string") {
      const long = LONG_TEXT.test(name) || (prop.maxLength || 0) > 200;
      control = long
        ? h("textarea", { ...common, rows: "3", spellcheck: "false" })
        : h("input", { ...common, type: "text", spellcheck: "false", autocomplete: "off" });
      if (prop.default !== undefined) control.placeholder = String(prop.default);
      read = () => (control.value === "" ? undefined : control.value);
    } else {
      control = h("textarea", {
        ...common,
        rows: "3",
        spellcheck: "false",
        class: "json-input",
        placeholder: type === "array" ? "[ … ] (JSON)" : "{ … } (JSON)",
      });
      read = () => {
        if (control.value.trim() === "") return undefined;
        try {
          return JSON.parse(control.value);
        } catch {
          throw new FieldError(control, errorId, `${name} is not valid JSON`);
        }
      };
    }
    readers.push({ name, read, control, errorId, isRequired });
    fields.append(
      h(
        "div",
        { class: `field field-${type}` },
        type === "boolean" ? h("div", { class: "checkbox-row" }, control, label) : [label, control],
        h("p", { id: hintId, class: "hint" }, hint),
        h("p", { id: errorId, class: "field-error", role: "alert" }),
      ),
    );
  }
  if (!Object.keys(props).length) fields.append(h("p", { class: "muted" }, "This tool takes no arguments."));

  const read = () => {
    const args = {};
    for (const r of readers) {
      r.control.removeAttribute("aria-invalid");
      document.getElementById(r.errorId).textContent = "";
    }
    for (const r of readers) {
      const value = r.read();
      if (value === undefined && r.isRequired) throw new FieldError(r.control, r.errorId, `${r.name} is required`);
      if (value !== undefined) args[r.name] = value;
    }
    return args;
  };
  return { element: fields, read };
}

export class FieldError extends Error {
  constructor(control, errorId, message) {
    super(message);
    this.control = control;
    this.errorId = errorId;
  }

  show() {
    this.control.setAttribute("aria-invalid", "true");
    document.getElementById(this.errorId).textContent = this.message;
    this.control.focus();
  }
}
