"""Secret redaction for what the node records: tool arguments in the audit log, approvals on screen.

Sits under the audit log (`desktop_agent.audit`), which stores `redact(arguments)`, and anything else
that shows a caller's arguments to a person. Pure functions over JSON-like values; every pattern is
RE2 (linear time), because the text being redacted comes from callers and may be hostile.

Rules (CONTRACT §8's list, and what "secret-looking" means here):
1. A mapping key names a secret when, upper-cased, it contains TOKEN, SECRET, PASSWORD, PASSWD,
   PASSPHRASE, CREDENTIAL, PRIVATE, SESSION or COOKIE anywhere (PGPASSWORD, SESSION_ID, MY_PRIVATE_X,
   XSRFTOKEN); contains AUTH other than as AUTHOR... (AUTHORIZATION, OAUTH, X_AUTH; not `author`);
   or has a word (split at `_`, `-`, `.`, spaces) that is KEY/KEYS, PASS, PWD, PAT, or a known compound
   of them (APIKEY, ACCESSKEY, DBPASS, PASSCODE, DBPWD ...). So `monkey`, `keyboard`, `passage`,
   `compass`, `author` are ordinary keys, while `sort_key` or `PWD` (the shell's working directory) are
   redacted: over-redacting a harmless value costs less than keeping a secret.
   Its value is replaced whole, whatever its type.
2. Inside every string: values of `NAME=value` / `NAME: value` / `"NAME": "value"` whose NAME names a
   secret (rule 1); `--option value` / `--option=value` whose option names one (`--password`, `--token`);
   `Authorization:` / `Proxy-Authorization:` / `Cookie:` / `Set-Cookie:` / `X-Api-Key:` header values;
   `Bearer x` / `Basic x`; the password of `scheme://user:password@host`; `-u user:pw` / `--user user:pw`
   (curl and friends); `-p<pw>` on a mysql/mariadb command line and `sshpass -p pw`; PEM private key
   blocks; and token shapes wherever they stand: `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_`, `github_pat_`,
   `sk-`, `sk-ant-`, `xox?-`, `AKIA…`/`ASIA…`, `glpat-`, `AIza…`, JWTs (`eyJ….….…`).
   Ordinary words (`keyboard`, `passage`, a sentence with "password" in it) stay as they are.
3. A string longer than `MAX_AUDIT_STRING` is cut to that many characters, keeping its length and the
   SHA-256 of the original; only a window slightly longer than the cut is searched, so a 16 MiB
   `fs_write` costs the event loop no more than a short one, and a secret straddling the cut is still
   caught (a private key block running past the window is redacted to the window's end).
4. Nesting deeper than `MAX_DEPTH` is replaced by a marker (no recursion blow-up on hostile input).
5. At most `MAX_VALUES` values (keys, strings, numbers ...) of one argument object are looked at; the
   rest of a list or mapping is replaced by one marker saying how many entries were not recorded; and
   at most `MAX_SEARCHED_CHARS` characters are searched: a string past that budget is recorded only as
   its length and SHA-256 (never unsearched text). The
   audit log redacts on the event loop, and a 16 MiB frame of short strings would otherwise cost it
   seconds; with the cap one record costs well under 0.5 s, whatever the caller sends.
"""

from __future__ import annotations

import hashlib
from typing import Any

import re2

__all__ = [
    "MAX_AUDIT_STRING",
    "MAX_DEPTH",
    "MAX_VALUES",
    "REDACTED",
    "KeyMemo",
    "is_secret_key",
    "redact",
    "redact_text",
]

REDACTED = "[REDACTED]"
MAX_AUDIT_STRING = 4096
MAX_DEPTH = 64
MAX_VALUES = 2000
MAX_SEARCHED_CHARS = 64 * 1024
CUT_KEY = "[cut]"
_WINDOW_EXTRA = 512  # rule 3: searched past the cut so a secret across it is still whole

_KEY_ANYWHERE = (
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "CREDENTIAL",
    "PRIVATE",
    "SESSION",
    "COOKIE",
)
_KEY_WORDS = frozenset({"KEY", "KEYS", "PASS", "PWD", "PAT", "PIN", "OTP", "MFA", "TOTP", "JWT", "BEARER"})
_KEY_COMPOUND_PREFIXES = frozenset(
    {
        "API", "ACCESS", "SECRET", "PRIVATE", "PRIV", "SIGNING", "MASTER", "ENCRYPTION", "ENC", "CRYPT",
        "SSH", "GPG", "PGP", "LICENSE", "HMAC", "CLIENT", "APP", "DEPLOY", "SERVICE", "ACCOUNT", "AES",
        "RSA", "DB", "SMTP", "MYSQL", "PG", "ROOT", "ADMIN", "USER", "FTP", "MAIL", "REDIS", "HTTP",
        "PROXY", "LDAP", "VNC", "WIFI", "SUDO", "LOGIN", "X",
    }
)  # fmt: skip
_KEY_SUFFIXES_AFTER_WORD = frozenset({"", "S", "FILE", "PAIR", "WD", "WORD", "WORDS", "PHRASE", "CODE", "ID"})
_WORD_SPLIT = re2.compile(r"[^A-Z0-9]+")


def _word_is_secret(word: str) -> bool:
    if word in _KEY_WORDS:
        return True
    for base in ("KEY", "PASS", "PWD"):
        if word.endswith(base) and word[: -len(base)] in _KEY_COMPOUND_PREFIXES:
            return True
        if word.startswith(base) and word[len(base) :] in _KEY_SUFFIXES_AFTER_WORD and base != "KEY":
            return True
    return word in ("KEYFILE", "KEYPAIR")


def is_secret_key(name: str) -> bool:
    """Rule 1: does a mapping key or variable name name a secret?"""
    upper = name[:256].upper()
    if any(marker in upper for marker in _KEY_ANYWHERE):
        return True
    at = upper.find("AUTH")
    while at >= 0:
        rest = upper[at + 4 :]
        if not rest.startswith("OR") or rest.startswith("ORIZ"):
            return True
        at = upper.find("AUTH", at + 4)
    if upper.isascii() and upper.isalnum():  # one word (`text`, `path`): no split needed
        return _word_is_secret(upper)
    return any(_word_is_secret(w) for w in _WORD_SPLIT.split(upper) if w)


def _rx(pattern: str) -> Any:
    return re2.compile(pattern)


_PEM = _rx(
    r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|$)"
)
_TOKENS = _rx(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-ant-[A-Za-z0-9_-]{10,}"
    r"|sk-[A-Za-z0-9_-]{16,}|xox[a-z]-[A-Za-z0-9-]{10,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|glpat-[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)"
)
_HEADER = _rx(
    r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-api-key|api-key|x-auth-token)(\s*:\s*)([^\r\n'\"]+)"
)
_BEARER = _rx(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_URL_CREDENTIALS = _rx(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/\s:@'\"]*):([^/\s@'\"]+)@")
_USER_OPTION = _rx(r"(^|\s)(-u|-U|--user|--proxy-user)(\s*|=)(['\"]?)([^\s:'\"]*):([^\s'\"]+)")
_MYSQL = _rx(r"(?i)\b(mysql|mysqldump|mysqladmin|mysqlimport|mysqlsh|mariadb[a-z-]*)\b")
_MYSQL_P = _rx(r"(^|\s)(-p)([^\s]+)")
_SSHPASS = _rx(r"(\bsshpass\s+(?:-\w+\s+)*-p\s*)(\S+)")
# Candidates only where the name holds a marker (the callback then applies rule 1 exactly): a string dense
# with ordinary `a=b` pairs costs no Python callback per pair.
_MARKERS = r"(?i:TOKEN|SECRET|PASS|PWD|CREDENTIAL|PRIVATE|SESSION|COOKIE|AUTH|KEY|PAT|PIN|OTP|MFA|JWT|BEARER)"
_OPTION = _rx(
    r"(^|[\s'\"])(--?[A-Za-z0-9_-]*"
    + _MARKERS
    + r"[A-Za-z0-9_-]*)(=|\s+)(\"[^\"]*\"|'[^']*'|[^\s\"'-][^\s\"']*)"
)
_ASSIGN = _rx(
    r"(\"?)\b([A-Za-z0-9_.-]*"
    + _MARKERS
    + r"[A-Za-z0-9_.-]*)(\"?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s\"',;&|]+)"
)


def _keep_name(name_group: int, value_group: int) -> Any:
    """A replacement keeping every group up to the value, which is redacted when the name is a secret."""

    def replace(m: Any) -> str:
        name = m.group(name_group).lstrip("-")
        head = "".join(m.group(i) or "" for i in range(1, value_group))
        return head + (REDACTED if is_secret_key(name) else m.group(value_group))

    return replace


# Every pattern above in one alternation (flags stay scoped to their own group): a text none of them
# matches comes out of `_redact_window` unchanged, so one search replaces its ten passes for the common
# case of an ordinary string. Any match, even a harmless `a=b`, takes the full path.
_ANY = _rx(
    "|".join(
        f"(?:{rx.pattern})"
        for rx in (
            _PEM, _TOKENS, _HEADER, _BEARER, _URL_CREDENTIALS, _USER_OPTION, _MYSQL, _SSHPASS, _OPTION,
            _ASSIGN,
        )
    )
)  # fmt: skip


def _precheck_set() -> Any:
    """`_ANY` as an RE2 set: it says only whether the text matches (no groups to fill, no offsets to
    map back), at a third of `_ANY.search`'s cost for a short string. A set has no NFA to fall back on,
    and RE2 accounts for that: its DFA never gives up on a text (when its state cache fills it starts
    the cache again and goes on), and a memory budget too small for the patterns fails `Compile`, here
    at import, rather than a later match."""
    patterns = re2.Set.SearchSet()
    patterns.Add(_ANY.pattern)
    patterns.Compile()
    return patterns


_ANY_SET = _precheck_set()


def _redact_window(text: str) -> str:
    return _redact_passes(text) if _ANY_SET.Match(text) else text


def _redact_passes(text: str) -> str:
    text = _PEM.sub(REDACTED, text)
    text = _TOKENS.sub(REDACTED, text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}:{REDACTED}@", text)
    text = _USER_OPTION.sub(
        lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{m.group(4)}{m.group(5)}:{REDACTED}", text
    )
    if _MYSQL.search(text):
        text = _MYSQL_P.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SSHPASS.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _OPTION.sub(_keep_name(2, 4), text)
    return str(_ASSIGN.sub(_keep_name(2, 4), text))


def redact_text(text: str) -> str:
    """Rules 2-3 for one string."""
    if len(text) <= MAX_AUDIT_STRING:
        return _redact_window(text)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    head = _redact_window(text[: MAX_AUDIT_STRING + _WINDOW_EXTRA])[:MAX_AUDIT_STRING]
    return f"{head}...[cut: {len(text)} chars, sha256 {digest}]"


class KeyMemo:
    """What rules 1-2 make of mapping keys already seen: (the key as recorded, does it name a secret).

    Both are pure functions of the key, and callers send the same few keys (`text`, `command`, `path`)
    on every call: the audit log keeps one memo, so a key costs one dict lookup instead of an RE2
    search and the rule-1 test. Bounded: at most `MAX_KEYS` keys of at most `MAX_KEY_CHARS` characters
    are kept (the rest are worked out each time), so hostile keys cannot grow it.
    """

    MAX_KEYS = 4096
    MAX_KEY_CHARS = 256

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, bool]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def lookup(self, key: str, budget: list[int]) -> tuple[str, bool]:
        seen = self._seen.get(key)
        if seen is not None and budget[1] > 0:
            budget[1] -= len(key)  # what `_redact_str` charges for it (keys kept are shorter than the window)
            return seen
        searched = budget[1] > 0
        outcome = (_redact_str(key, budget), is_secret_key(key))
        if searched and len(key) <= self.MAX_KEY_CHARS and len(self._seen) < self.MAX_KEYS:
            self._seen[key] = outcome
        return outcome


def redact(value: Any, keys: KeyMemo | None = None) -> Any:
    """A copy of `value` with secret-looking values replaced by "[REDACTED]" (rules 1-5); `keys`
    remembers what the rules made of mapping keys across calls (same result, less work)."""
    return _redact(value, 0, [MAX_VALUES, MAX_SEARCHED_CHARS], keys)


def _redact(value: Any, depth: int, budget: list[int], keys: KeyMemo | None = None) -> Any:
    budget[0] -= 1
    if depth > MAX_DEPTH:
        return f"{REDACTED} (nested deeper than {MAX_DEPTH})"
    if isinstance(value, str):  # the most common value first
        return _redact_str(value, budget)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if budget[0] <= 0:
                out[CUT_KEY] = f"{len(value) - i} more entries not recorded"
                break
            budget[0] -= 1
            if keys is not None:
                key, secret = keys.lookup(str(k), budget)
            else:
                key, secret = _redact_str(str(k), budget), is_secret_key(str(k))
            out[key] = REDACTED if v is not None and secret else _redact(v, depth + 1, budget, keys)
        return out
    if isinstance(value, list | tuple):
        items: list[Any] = []
        for i, v in enumerate(value):
            if budget[0] <= 0:
                items.append(f"{CUT_KEY} {len(value) - i} more entries not recorded")
                break
            items.append(_redact(v, depth + 1, budget, keys))
        return items
    return value


def _redact_str(text: str, budget: list[int]) -> str:
    if budget[1] <= 0:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{REDACTED} (not searched: {len(text)} chars, sha256 {digest})"
    budget[1] -= min(len(text), MAX_AUDIT_STRING + _WINDOW_EXTRA)
    return redact_text(text)
