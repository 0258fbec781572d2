"""The node owner's configuration: `<home>/agent.toml` parsed into value objects, and its live watcher.

Sits under the engine (`desktop_agent.engine`), which reads the `Policy` in force at the start of every call,
and beside the daemon, which reads the connection part of `AgentConfig` (server, name, TLS files).
Nothing here runs tools or touches the network.

agent.toml (every key optional)::

    server = "https://cortex.example:8765"
    name = "laptop"
    allowed_roots = ["~/projects", "/srv/data"]   # default: the user's home directory
    protected_paths = ["~/.cortex-server"]        # whole trees refused to every tool (default: none)
    max_concurrency = 16

    [tls]
    ca = "/etc/cortex/ca.pem"
    client_cert = "/etc/cortex/node.pem"
    client_key = "/etc/cortex/node.key"

    [tools]
    enabled = ["echo", "fs_read", "shell_exec"]   # default: all tools

    [shell]
    enabled = true

    [browser]
    enabled = true
    executable = "/usr/bin/chromium"               # default when present
    idle_timeout_s = 300
    allowed_schemes = ["http", "https", "file"]

    [processes]
    max = 16                          # background processes running at once (process_start)
    buffer_bytes = 4194304            # output ring buffer of each

    [approval]
    require = ["shell_exec", "process_start"]   # the owner says yes first (default: none)
    timeout_s = 120                   # no answer within this is a denial

    [limits]
    max_read_bytes = 8388608          # largest fs_read slice
    max_write_bytes = 16777216        # largest fs_write content (decoded)
    max_output_bytes = 1048576        # per shell stream: first and last half kept

Rules:
1. Command-line `Overrides` are applied on top of every load, including live reloads.
2. A bad file is a `ConfigError` naming the file and the key; on a live reload the old policy stays in force.
3. Unknown keys are logged, not fatal (a newer agent.toml keeps working with an older agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tomllib
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import watchfiles

from desktop_agent.homewatch import open_watch

__all__ = [
    "CONFIG_FILE",
    "AgentConfig",
    "ConfigError",
    "Limits",
    "Overrides",
    "Policy",
    "TlsConfig",
    "default_browser_executable",
    "load_config",
    "watch_config",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "agent.toml"
MIB = 1 << 20
_TOP_KEYS = {
    "server",
    "name",
    "allowed_roots",
    "protected_paths",
    "max_concurrency",
    "tls",
    "tools",
    "shell",
    "browser",
    "limits",
    "processes",
    "approval",
}
_SECTION_KEYS: dict[str, set[str]] = {
    "tls": {"ca", "client_cert", "client_key"},
    "tools": {"enabled"},
    "shell": {"enabled"},
    "browser": {"enabled", "executable", "idle_timeout_s", "allowed_schemes"},
    "limits": {"max_read_bytes", "max_write_bytes", "max_output_bytes"},
    "processes": {"max", "buffer_bytes"},
    "approval": {"require", "timeout_s"},
}


class ConfigError(ValueError):
    """agent.toml cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Limits:
    """Size limits of the tools (bytes)."""

    max_read_bytes: int = 8 * MIB
    max_write_bytes: int = 16 * MIB
    max_output_bytes: int = MIB


def default_browser_executable() -> Path | None:
    """/usr/bin/chromium when present, else the first chromium on PATH, else None."""
    fixed = Path("/usr/bin/chromium")
    if fixed.exists():
        return fixed
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


@dataclass(frozen=True)
class Policy:
    """What the node owner allows; a snapshot, replaced as a whole on every reload."""

    allowed_roots: tuple[Path, ...] = field(default_factory=lambda: (Path(os.path.realpath(Path.home())),))
    enabled_tools: frozenset[str] | None = None
    shell_enabled: bool = True
    max_concurrency: int = 16
    limits: Limits = field(default_factory=Limits)
    browser_enabled: bool = True
    browser_executable: Path | None = field(default_factory=default_browser_executable)
    browser_idle_timeout_s: float = 300.0
    browser_allowed_schemes: tuple[str, ...] = ("http", "https", "file")
    protected_paths: tuple[Path, ...] = ()  # trees no tool may touch (desktop_agent.confine rule 3)
    max_processes: int = 16
    process_buffer_bytes: int = 4 * MIB
    approval_required: frozenset[str] = frozenset()  # [approval] require: the owner answers first
    approval_timeout_s: float = 120.0  # [approval] timeout_s: no answer within it is a denial

    def tool_enabled(self, name: str) -> bool:
        """The owner's switches for one tool (availability of the browser itself is the engine's business)."""
        if self.enabled_tools is not None and name not in self.enabled_tools:
            return False
        if (name == "shell_exec" or name.startswith("process_")) and not self.shell_enabled:
            return False
        return not (name.startswith("browser_") and not self.browser_enabled)


@dataclass(frozen=True)
class TlsConfig:
    """Files for (m)TLS to the server; None = system defaults / no client certificate."""

    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class Overrides:
    """Command-line flags of `cortex-agent run`, stronger than agent.toml (rule 1)."""

    allowed_roots: tuple[Path, ...] = ()  # --allow-root (repeatable); non-empty replaces the file's roots
    max_concurrency: int | None = None  # --max-concurrency
    browser_enabled: bool | None = None  # --no-browser gives False


@dataclass(frozen=True)
class AgentConfig:
    """The whole of agent.toml after overrides."""

    home: Path
    server: str | None = None
    name: str | None = None
    tls: TlsConfig = field(default_factory=TlsConfig)
    policy: Policy = field(default_factory=Policy)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def path(self) -> Path:
        return self.home / CONFIG_FILE


def _resolve_root(raw: str | Path, where: str) -> Path:
    expanded = Path(os.path.expanduser(str(raw)))
    if not expanded.is_absolute():
        raise ConfigError(f"{where}: allowed root {str(raw)!r} must be an absolute path (or start with ~)")
    return Path(os.path.realpath(expanded))


def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table.get(key)
    if value is None:
        return None
    # bool is an int subclass: never accept true/false where a number is meant.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise ConfigError(f"{where}: {key} must be {names}, not {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _str_list(table: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    value = _get(table, key, list, where)
    if value is not None and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return None if value is None else [str(v) for v in value]


def _positive(value: Any, key: str, where: str) -> Any:
    if value is not None and value <= 0:
        raise ConfigError(f"{where}: {key} must be positive")
    return value


def _section(data: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    unknown = set(table) - _SECTION_KEYS[name]
    if unknown:
        logger.warning("%s: ignoring unknown keys in [%s]: %s", where, name, ", ".join(sorted(unknown)))
    return table


def _parse(home: Path, data: Mapping[str, Any], where: str) -> AgentConfig:
    unknown = set(data) - _TOP_KEYS
    if unknown:
        logger.warning("%s: ignoring unknown keys: %s", where, ", ".join(sorted(unknown)))
    tls_t, tools_t, shell_t = (_section(data, s, where) for s in ("tls", "tools", "shell"))
    browser_t, limits_t = _section(data, "browser", where), _section(data, "limits", where)
    processes_t = _section(data, "processes", where)
    approval_t = _section(data, "approval", where)

    def path_or_none(table: Mapping[str, Any], key: str) -> Path | None:
        value = _get(table, key, str, where)
        return Path(os.path.expanduser(value)) if value else None

    defaults = Policy()
    roots_raw = _str_list(data, "allowed_roots", where)
    if roots_raw is not None and not roots_raw:
        raise ConfigError(f"{where}: allowed_roots is empty (remove the key for the default)")
    roots = tuple(_resolve_root(r, where) for r in roots_raw) if roots_raw else defaults.allowed_roots
    protected_raw = _str_list(data, "protected_paths", where) or []
    protected = tuple(_resolve_root(r, where) for r in protected_raw)
    enabled = _str_list(tools_t, "enabled", where)
    limits = Limits(
        **{
            k: _positive(_get(limits_t, k, int, where), k, where)
            for k in _SECTION_KEYS["limits"]
            if limits_t.get(k) is not None
        }
    )
    concurrency = _positive(_get(data, "max_concurrency", int, where), "max_concurrency", where)
    shell_on = _get(shell_t, "enabled", bool, where)
    browser_on = _get(browser_t, "enabled", bool, where)
    idle = _positive(_get(browser_t, "idle_timeout_s", (int, float), where), "idle_timeout_s", where)
    schemes = _str_list(browser_t, "allowed_schemes", where)
    executable = path_or_none(browser_t, "executable") if "executable" in browser_t else None
    max_processes = _positive(_get(processes_t, "max", int, where), "max", where)
    buffer_bytes = _positive(_get(processes_t, "buffer_bytes", int, where), "buffer_bytes", where)
    require = _str_list(approval_t, "require", where) or []
    approval_timeout = _positive(_get(approval_t, "timeout_s", (int, float), where), "timeout_s", where)
    policy = Policy(
        allowed_roots=roots,
        enabled_tools=frozenset(enabled) if enabled is not None else None,
        shell_enabled=defaults.shell_enabled if shell_on is None else shell_on,
        max_concurrency=concurrency or defaults.max_concurrency,
        limits=limits,
        browser_enabled=defaults.browser_enabled if browser_on is None else browser_on,
        browser_executable=executable if "executable" in browser_t else defaults.browser_executable,
        browser_idle_timeout_s=float(idle) if idle is not None else defaults.browser_idle_timeout_s,
        browser_allowed_schemes=tuple(s.lower() for s in schemes)
        if schemes is not None
        else (defaults.browser_allowed_schemes),
        protected_paths=protected,
        max_processes=max_processes or defaults.max_processes,
        process_buffer_bytes=buffer_bytes or defaults.process_buffer_bytes,
        approval_required=frozenset(require),
        approval_timeout_s=float(approval_timeout) if approval_timeout else defaults.approval_timeout_s,
    )
    return AgentConfig(
        home=home,
        server=_get(data, "server", str, where),
        name=_get(data, "name", str, where),
        tls=TlsConfig(
            ca=path_or_none(tls_t, "ca"),
            client_cert=path_or_none(tls_t, "client_cert"),
            client_key=path_or_none(tls_t, "client_key"),
        ),
        policy=policy,
        raw=data,
    )


def _apply(config: AgentConfig, overrides: Overrides | None) -> AgentConfig:
    if overrides is None:
        return config
    policy = config.policy
    if overrides.allowed_roots:
        roots = tuple(_resolve_root(r, "--allow-root") for r in overrides.allowed_roots)
        policy = replace(policy, allowed_roots=roots)
    if overrides.max_concurrency is not None:
        if overrides.max_concurrency <= 0:
            raise ConfigError("--max-concurrency must be positive")
        policy = replace(policy, max_concurrency=overrides.max_concurrency)
    if overrides.browser_enabled is not None:
        policy = replace(policy, browser_enabled=overrides.browser_enabled)
    return replace(config, policy=policy)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _load_from_bytes(home: Path, raw: bytes | None, overrides: Overrides | None) -> AgentConfig:
    path = home / CONFIG_FILE
    if raw is None:
        return _apply(AgentConfig(home=home), overrides)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return _apply(_parse(home, data, str(path)), overrides)


def load_config(home: Path, overrides: Overrides | None = None) -> AgentConfig:
    """Parse `<home>/agent.toml` (defaults when absent) and apply `overrides`; raise ConfigError if bad."""
    return _load_from_bytes(home, _read_bytes(home / CONFIG_FILE), overrides)


async def watch_config(
    home: Path,
    overrides: Overrides | None,
    current: AgentConfig,
    on_change: Callable[[AgentConfig], None],
    *,
    stop_event: asyncio.Event | None = None,
    poll_ms: int = 1000,
) -> None:
    """Reload agent.toml whenever it changes and call `on_change(new_config)` when it differs from `current`.

    Watches the home directory (editors often replace the file by rename). The file's bytes are also
    compared every `poll_ms` (and once as soon as the watch is in place), so an edit made between the
    caller's load and the start of the OS watch is not missed. A bad file is logged once per distinct
    content and the old configuration stays (rule 2). Returns when `stop_event` is set; cancel-safe.
    """
    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    path = home / CONFIG_FILE
    last: bytes | _Unset | None = _Unset()

    def only_config(change: watchfiles.Change, changed: str) -> bool:
        return Path(changed).name == CONFIG_FILE

    # On Linux a watch that ignores the audit log's appends (desktop_agent.homewatch); else watchfiles.
    watch = await asyncio.to_thread(open_watch, home, CONFIG_FILE)
    changes: AsyncGenerator[object, None] = (
        watch.changes(stop_event, poll_ms / 1000)
        if watch is not None
        else watchfiles.awatch(
            home,
            watch_filter=only_config,
            stop_event=stop_event,
            rust_timeout=poll_ms,
            yield_on_timeout=True,
            recursive=False,
            debounce=50,
            step=20,
        )
    )
    async with contextlib.aclosing(changes):  # the watch closes now, not when collected
        async for _changes in changes:
            raw = await asyncio.to_thread(_read_bytes_quiet, path)
            if raw == last:
                continue
            last = raw
            try:
                new = await asyncio.to_thread(_load_from_bytes, home, raw, overrides)
            except ConfigError as exc:
                logger.error("agent.toml not applied, the previous policy stays in force: %s", exc)
                continue
            if new != current:
                current = new
                logger.info("agent.toml reloaded")
                on_change(new)


class _Unset:
    """Marks 'not read yet' (None already means 'no file')."""


def _read_bytes_quiet(path: Path) -> bytes | None:
    try:
        return _read_bytes(path)
    except ConfigError:
        return None
