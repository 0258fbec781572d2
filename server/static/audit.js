// Audit-chain checking in the browser (CONTRACT §8), independent of the server's word for it.
//
// A record's `hash` is SHA-256 hex of the record without `hash`, serialised as Python's
// json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8").
// Rules this module keeps so that the bytes match:
//  1. Numbers are hashed as the exact text the server sent (a lossless parser keeps each number's
//     lexeme): Python prints floats with repr (`5.0`, `1e-07`), which JSON.parse + String() would not.
//     The server re-serialises records with Python's json, so its lexemes are Python's own.
//  2. Object keys are sorted by Unicode code point, as Python sorts str (not by UTF-16 code unit).
//  3. Strings are escaped like Python with ensure_ascii=False: `"` `\\` \b \f \n \r \t and other
//     controls below U+0020 as \u00xx; everything else raw. JSON.stringify on a string does the same.

export const GENESIS = "0".repeat(64);

class RawNumber {
  constructor(raw) {
    this.raw = raw;
  }
}

/** JSON.parse that keeps numbers as RawNumber (rule 1). Throws SyntaxError on bad input. */
export function parseLossless(text) {
  let i = 0;
  const fail = (what) => {
    throw new SyntaxError(`bad JSON at ${i}: ${what}`);
  };
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const out = {};
      ws();
      if (text[i] === "}") {
        i++;
        return out;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("key");
        const key = string();
        ws();
        if (text[i++] !== ":") fail("colon");
        out[key] = value();
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "}") {
          i++;
          return out;
        } else fail("object");
      }
    }
    if (c === "[") {
      i++;
      const out = [];
      ws();
      if (text[i] === "]") {
        i++;
        return out;
      }
      for (;;) {
        out.push(value());
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "]") {
          i++;
          return out;
        } else fail("array");
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [
      ["true", true],
      ["false", false],
      ["null", null],
    ]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m) fail("value");
    i += m[0].length;
    return new RawNumber(m[0]);
  };
  const string = () => {
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    if (i >= text.length) fail("string");
    i++;
    return JSON.parse(text.slice(start, i));
  };
  const result = value();
  ws();
  if (i !== text.length) fail("trailing data");
  return result;
}

function byCodePoint(a, b) {
  const x = Array.from(a);
  const y = Array.from(b);
  const n = Math.min(x.length, y.length);
  for (let k = 0; k < n; k++) {
    const d = x[k].codePointAt(0) - y[k].codePointAt(0);
    if (d) return d;
  }
  return x.length - y.length;
}

/** The canonical text of a value parsed by parseLossless (rules 1–3). */
export function canonicalJson(v) {
  if (v === null) return "null";
  if (v === true) return "true";
  if (v === false) return "false";
  if (v instanceof RawNumber) return v.raw;
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : fail(v);
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  const keys = Object.keys(v).sort(byCodePoint);
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(v[k])}`).join(",")}}`;
}

function fail(v) {
  throw new TypeError(`cannot serialise ${v} canonically`);
}

export async function sha256Hex(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** SHA-256 hex of a (losslessly parsed) record without its `hash`. */
export async function recordHash(raw) {
  const body = { ...raw };
  delete body.hash;
  return sha256Hex(canonicalJson(body));
}

/**
 * Incremental chain checker: feed it records in seq order (losslessly parsed), chunk by chunk.
 * `broken` is the first bad record {seq, why} or null.
 */
export class ChainVerifier {
  constructor() {
    this.lastHash = null; // null until the first record: the log may be read from seq 1 only
    this.lastSeq = 0;
    this.count = 0;
    this.broken = null;
  }

  async feed(records) {
    for (const raw of records) {
      if (this.broken) return;
      const seq = Number(raw.seq instanceof RawNumber ? raw.seq.raw : raw.seq);
      const expectedPrev = this.count === 0 ? GENESIS : this.lastHash;
      if (seq !== this.lastSeq + 1) {
        this.broken = { seq, why: `seq ${seq} follows ${this.lastSeq}` };
      } else if (raw.prev !== expectedPrev) {
        this.broken = { seq, why: "prev does not match the previous record's hash" };
      } else if ((await recordHash(raw)) !== raw.hash) {
        this.broken = { seq, why: "hash does not match the record's content" };
      }
      if (this.broken) return;
      this.lastHash = raw.hash;
      this.lastSeq = seq;
      this.count++;
    }
  }
}
