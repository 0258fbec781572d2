"""The node's tool engine: which tools exist, and the checked path every call takes.

Layering: the connection (`desktop_agent.connection`) turns JSON-RPC into calls on this engine; the engine
validates arguments against the manifest's inputSchema, enforces the owner's policy (`desktop_agent.policy`),
writes the audit log (`desktop_agent.audit`) and runs the tool function (`desktop_agent.tools.*`).
Nothing here knows about sockets.

Rules of a call:
1. Unknown or disabled tool -> RpcError(INVALID_PARAMS), audited as `tool.denied`; arguments failing the
   schema -> RpcError(INVALID_PARAMS) with the schema's complaint, also audited as `tool.denied`.
   Nothing runs.
2. At most `policy.max_concurrency` calls run at once; up to `QUEUE_FACTOR` times as many wait (first
   come, first served); beyond that -> RpcError(OVERLOADED), audited as `tool.denied`. The light
   process tools (`UNMETERED`: reading output, listing) take no slot: a long-polling `process_read`
   mostly waits, and must not keep other calls out while it does.
3. `tool.requested` is on disk (fsync'd) before the tool starts; if it cannot be written the tool does
   not run -> RpcError(INTERNAL_ERROR). If the audit log was silenced (deleted, moved, replaced or cut:
   `desktop_agent.audit` rule 5), this and every later call get an isError result naming the problem
   and nothing runs, until the agent is restarted.
4. Every started call ends with exactly one `tool.finished` (status ok | error | cancelled | timeout,
   exit_code, duration_ms, output_sha256 and output_bytes of the serialised result content).
   A cancelled call is audited, then CancelledError propagates. With ``durable_finish=False`` (the
   connection's hot path) the `tool.finished` record is queued for the next group commit and the result
   returns without waiting for its fsync: one fsync per call.
6. Per-call work is only what depends on the call: the tool table, each tool's compiled validator and
   fast argument pre-check, and the set of tools the current policy allows are built once (the last
   again when agent.toml changes).
5. The policy is a snapshot per call; agent.toml edits apply to later calls and fire `on_tools_changed`
   callbacks when the declared tool list changes.
7. A tool in `[approval] require` waits for the node owner's answer (`desktop_agent.approval`) after
   rule 1's checks and *before* rule 2's admission: a call waiting for its owner holds no slot. A
   denial (denied, timeout, withdrawn) is an isError result and the tool never starts. The owner
   answers through the control socket in the home (`desktop_agent.approval_socket`) or the tray.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from jsonschema import Draft202012Validator

from desktop_agent.approval import ApprovalRoom, ApprovalsFull
from desktop_agent.approval_socket import ControlSocket
from desktop_agent.audit import AUDIT_FILE, AuditLog, AuditSilenced
from desktop_agent.policy import AgentConfig, Overrides, Policy, load_config, watch_config
from desktop_agent.tools.base import ProgressFn, ToolContext, ToolFailure, ToolFunc, ToolResult
from desktop_agent.tools.basic import echo, system_info
from desktop_agent.tools.fs import FsTools
from desktop_agent.tools.process import ProcessTable, ProcessTools
from desktop_agent.tools.shell import shell_exec
from desktop_agent.uploads import BIG_RESULT_BYTES, EncodedList, json_digest_kept, size_bound
from spec.errors import INTERNAL_ERROR, INVALID_PARAMS, OVERLOADED, RpcError
from spec.json_text import canonical_bytes
from spec.manifest import QuickCheck, argument_problem, load_manifest, quick_check, schema_validator
from spec.protocol import MetaKey

__all__ = ["QUEUE_FACTOR", "ToolEngine"]

logger = logging.getLogger(__name__)

QUEUE_FACTOR = 16  # default 16 running + 256 waiting: a burst queues, more is refused
UNMETERED = frozenset({"process_read", "process_list"})
BROWSER_TOOLS = frozenset(t["name"] for t in load_manifest() if t["name"].startswith("browser_"))


@dataclass
class _Tool:
    spec: dict[str, Any]
    func: ToolFunc
    validator: Draft202012Validator
    quick: QuickCheck | None


class _Admission:
    """Rule 2: a semaphore whose size follows the live policy, with a bounded FIFO wait queue."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        limit = self._limit()
        if self._running < limit and not self._waiters:
            self._running += 1
            return
        if len(self._waiters) >= QUEUE_FACTOR * limit:
            raise RpcError(
                OVERLOADED, f"node busy: {self._running} calls running, {len(self._waiters)} waiting"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            else:  # the slot was handed to us just as we were cancelled: pass it on
                self.release()
            raise

    @property
    def running(self) -> int:
        return self._running

    def release(self) -> None:
        self._running -= 1
        self.wake()

    def wake(self) -> None:
        while self._waiters and self._running < self._limit():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._running += 1
                waiter.set_result(None)


def _content_digest(result: ToolResult) -> tuple[str, int]:
    data = canonical_bytes(result.content)
    return hashlib.sha256(data).hexdigest(), len(data)


class ToolEngine:
    """Owns the node's tools, policy and audit log for one agent process."""

    def __init__(self, home: Path, overrides: Overrides | None = None, *, watch_poll_ms: int = 1000) -> None:
        self.home = home
        self._overrides = overrides
        self._config = load_config(home, overrides)
        self._audit = AuditLog(home / AUDIT_FILE)
        self._watch_poll_ms = watch_poll_ms
        self._on_tools_changed: list[Callable[[], None]] = []
        self._admission = _Admission(lambda: self._config.policy.max_concurrency)
        self.approvals = ApprovalRoom(self._config.name or "")  # rule 7; the agent sets the node's name
        self._control = ControlSocket(home, self.approvals)
        self._watcher: asyncio.Task[None] | None = None
        self._stop_watch: asyncio.Event | None = None
        self._browser: Any = None
        self._logged_browser_reason: str | None = None
        funcs: dict[str, ToolFunc] = {"echo": echo, "system_info": system_info, "shell_exec": shell_exec}
        self._fs = FsTools()
        funcs.update(self._fs.tools())
        self.processes = ProcessTable(self._audit.append)  # the node's, not a connection's
        funcs.update(ProcessTools(self.processes).tools())
        funcs.update(self._load_browser())
        self._tools: dict[str, _Tool] = {
            spec["name"]: _Tool(
                spec,
                funcs[spec["name"]],
                schema_validator(spec["inputSchema"]),
                quick_check(spec["inputSchema"]),
            )
            for spec in load_manifest()
            if spec["name"] in funcs
        }
        self._browser_reason()  # the owner's log says once why the browser tools are missing, if they are
        self._declared = self._available_names()
        self._allowed: tuple[Policy, frozenset[str]] = (self._config.policy, frozenset(self._declared))
        logger.info("declared tools: %s", ", ".join(self._declared))

    # -- configuration --------------------------------------------------------------------------
    @property
    def config(self) -> AgentConfig:
        """The agent.toml in force (after command-line overrides)."""
        return self._config

    @property
    def policy(self) -> Policy:
        return self._config.policy

    def _load_browser(self) -> dict[str, ToolFunc]:
        try:
            from desktop_agent.tools.browser import BrowserTools
        except ImportError as exc:
            logger.info("browser tools not available: %s", exc)
            return {}
        try:
            self._browser = BrowserTools(lambda: self._config.policy, home=self.home)
            return dict(self._browser.tools())
        except Exception:
            logger.exception("browser tools failed to load")
            self._browser = None
            return {}

    def _browser_reason(self) -> str | None:
        if self._browser is None:
            return "browser tools not installed"
        try:
            reason: str | None = self._browser.unavailable_reason()
        except Exception as exc:
            reason = f"browser check failed: {exc}"
        if reason is not None and reason != self._logged_browser_reason:
            logger.info("browser tools not declared: %s", reason)
        self._logged_browser_reason = reason
        return reason

    def _available_names(self, policy: Policy | None = None) -> list[str]:
        policy = policy or self._config.policy
        names = [name for name in self._tools if policy.tool_enabled(name)]
        if any(name in BROWSER_TOOLS for name in names) and self._browser_reason() is not None:
            names = [name for name in names if name not in BROWSER_TOOLS]
        return names

    def _apply_config(self, config: AgentConfig) -> None:
        self._config = config
        self._admission.wake()  # a larger max_concurrency lets waiting calls in now
        names = self._available_names()
        self._allowed = (config.policy, frozenset(names))
        if names != self._declared:
            self._declared = names
            logger.info("declared tools changed: %s", ", ".join(names))
            for callback in list(self._on_tools_changed):
                try:
                    callback()
                except Exception:
                    logger.exception("on_tools_changed callback failed")

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the audit log and start watching agent.toml."""
        await self._audit.open()
        try:
            await self._control.start()
        except (OSError, AttributeError) as exc:  # no AF_UNIX here: approvals are answered in the tray
            logger.warning("approval control socket not available: %s", exc)
        if self._watcher is None:
            self._stop_watch = asyncio.Event()
            self._watcher = asyncio.create_task(self._watch(), name="cortex-policy-watch")

    async def _watch(self) -> None:
        assert self._stop_watch is not None
        try:
            await watch_config(
                self.home,
                self._overrides,
                self._config,
                self._apply_config,
                stop_event=self._stop_watch,
                poll_ms=self._watch_poll_ms,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("agent.toml watcher stopped; policy edits need a restart")

    async def aclose(self) -> None:
        """Stop the watcher and the background processes, close the browser and the audit log."""
        await self._control.aclose()
        if self._watcher is not None:
            assert self._stop_watch is not None
            self._stop_watch.set()
            try:
                await asyncio.wait_for(self._watcher, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._watcher.cancel()
            self._watcher = None
        try:
            await self.processes.aclose()
        except Exception:
            logger.exception("stopping the background processes failed")
        if self._browser is not None:
            try:
                await self._browser.aclose()
            except Exception:
                logger.exception("closing the browser failed")
        self._fs.close()
        await self._audit.aclose()

    def on_tools_changed(self, callback: Callable[[], None]) -> None:
        """Register a callback run when the set of available tools changes (policy edit)."""
        self._on_tools_changed.append(callback)

    def list_tools(self) -> list[dict[str, Any]]:
        """The tools declared under the current policy, as MCP Tool objects (manifest order)."""
        return [self._tools[name].spec for name in self._available_names()]

    # -- audit ----------------------------------------------------------------------------------
    def audit_head(self) -> dict[str, Any]:
        return self._audit.head()

    async def audit_read(self, after_seq: int, limit: int) -> dict[str, Any]:
        records = await self._audit.read(after_seq, limit)
        return {"records": records, "head": self._audit.head()}

    async def record(self, event: str, **fields: Any) -> None:
        """Append a non-tool audit record (node.connected, node.disconnected).

        A silenced log (rule 3) is not an error here: the node stays connected, so that every tool call
        gets its isError answer instead of the node vanishing into reconnect attempts.
        """
        try:
            await self._audit.append(event, **fields)
        except AuditSilenced:
            logger.warning("not audited (%s): %s", event, self._audit.failure)

    @property
    def audit_failure(self) -> str | None:
        """Why every tool is refused (the audit log was silenced), or None."""
        return self._audit.failure

    def _allowed_names(self, policy: Policy) -> frozenset[str]:
        cached_policy, names = self._allowed
        if cached_policy is not policy:
            names = frozenset(self._available_names(policy))
            self._allowed = (policy, names)
        return names

    # -- calls ----------------------------------------------------------------------------------
    async def _deny(
        self, code: int, message: str, name: str, arguments: Any, request_id: Any, caller: Any
    ) -> NoReturn:
        try:
            await self._audit.append(
                "tool.denied",
                request_id=request_id,
                tool=name,
                arguments=arguments,
                caller=caller,
                reason=message,
            )
        except OSError:
            logger.exception("could not audit a denied call")
        raise RpcError(code, message)

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        request_id: str | int,
        caller: dict[str, Any],
        progress: ProgressFn | None = None,
        durable_finish: bool = True,
        alone: bool = True,
    ) -> dict[str, Any]:
        """Run one tool call and return the CallToolResult; see the module's rules.

        `alone` False: the caller knows other calls came with this one (`CallContext.alone`), so its
        ``tool.requested`` waits for their batch even when it is the only call admitted so far."""
        failure = self._audit.failure
        if failure is not None:  # rule 3: nothing runs, and nothing can be audited
            return ToolResult.error(failure).to_wire()
        policy = self._config.policy
        tool = self._tools.get(name)
        if tool is None or name not in self._allowed_names(policy):
            reason = "unknown tool" if tool is None else "tool disabled by the node's policy"
            await self._deny(INVALID_PARAMS, f"{reason}: {name}", name, arguments, request_id, caller)
        assert tool is not None
        problem = argument_problem(tool.validator, arguments, tool.quick)
        if problem is not None:
            message = f"invalid arguments for {name}: {problem}"
            await self._deny(INVALID_PARAMS, message, name, arguments, request_id, caller)
        if name in policy.approval_required:  # rule 7: before admission, so no slot is held
            refusal = await self._ask_owner(name, arguments, policy, request_id, caller, progress)
            if refusal is not None:
                return ToolResult.error(refusal).to_wire()
        if name in UNMETERED:
            return await self._run(tool, arguments, policy, request_id, caller, progress)
        try:
            await self._admission.acquire()
        except RpcError as exc:
            await self._deny(exc.code, exc.message, name, arguments, request_id, caller)
        try:
            return await self._run(
                tool, arguments, policy, request_id, caller, progress, durable_finish, alone
            )
        finally:
            self._admission.release()

    async def _ask_owner(
        self,
        name: str,
        arguments: dict[str, Any],
        policy: Policy,
        request_id: str | int,
        caller: dict[str, Any],
        progress: ProgressFn | None,
    ) -> str | None:
        try:
            return await self.approvals.ask(
                audit=self._audit.append,
                tool=name,
                arguments=arguments,
                request_id=request_id,
                caller=caller,
                timeout_s=policy.approval_timeout_s,
                progress=progress,
            )
        except ApprovalsFull as exc:
            await self._deny(OVERLOADED, f"node busy: {exc}", name, arguments, request_id, caller)
        except AuditSilenced as exc:
            return str(exc)
        except OSError as exc:
            logger.exception("audit log not writable; refusing to ask for %s", name)
            raise RpcError(
                INTERNAL_ERROR, "the node's audit log cannot be written; the tool did not run"
            ) from exc

    async def _run(
        self,
        tool: _Tool,
        arguments: dict[str, Any],
        policy: Policy,
        request_id: str | int,
        caller: dict[str, Any],
        progress: ProgressFn | None,
        durable_finish: bool = True,
        alone: bool = True,
    ) -> dict[str, Any]:
        name = tool.spec["name"]
        started = time.monotonic()
        # Per call only what depends on the call: no closures are built here (rule 6).
        finish = functools.partial(self._finish, name, request_id, caller, started)

        try:
            requested = await self._audit.append(
                "tool.requested",
                alone=alone and self._admission.running <= 1,  # the only call in flight: no batch to join
                request_id=request_id,
                tool=name,
                caller=caller,
                arguments=arguments,
            )
        except asyncio.CancelledError:
            await asyncio.shield(finish("cancelled", None))  # the record is on disk (audit rule 1)
            raise
        except AuditSilenced as exc:
            return ToolResult.error(str(exc)).to_wire()
        except Exception as exc:
            logger.exception("audit log not writable; refusing to run %s", name)
            raise RpcError(
                INTERNAL_ERROR, "the node's audit log cannot be written; the tool did not run"
            ) from exc

        ctx = ToolContext(request_id=request_id, caller=caller, home=self.home, policy=policy)
        if progress is not None:
            ctx.progress = progress
        try:
            result = await tool.func(arguments, ctx)
        except ToolFailure as exc:
            result = ToolResult.error(str(exc))
        except asyncio.CancelledError:
            await asyncio.shield(finish("cancelled", None))
            raise
        except Exception as exc:
            logger.exception("tool %s failed unexpectedly", name)
            result = ToolResult.error(f"{name} failed unexpectedly: {type(exc).__name__}: {exc}")
        timed_out = isinstance(result.structured, dict) and result.structured.get("timed_out") is True
        status = "timeout" if timed_out else "error" if result.is_error else "ok"
        audit = {"requested_seq": requested["seq"]}
        try:
            if durable_finish:
                record = await finish(status, result)
                assert record is not None
                audit["finished_seq"] = record["seq"]
            else:  # the connection path: queued for the next group commit, its seq not known yet
                await finish(status, result, queued=True)
        except OSError:
            logger.exception("could not audit the end of %s (request %s)", name, request_id)
        # Where this call sits in the node's audit log, so a caller can link a result to its records.
        wire = result.to_wire()  # a fresh dict: the audit link is added in place
        wire["_meta"] = {MetaKey.AUDIT: audit}
        return wire

    async def _finish(
        self,
        name: str,
        request_id: str | int,
        caller: dict[str, Any],
        started: float,
        status: str,
        result: ToolResult | None,
        *,
        queued: bool = False,
    ) -> dict[str, Any] | None:
        """Rule 4's `tool.finished`: appended (returned once durable), or with `queued` left to the next
        group commit (None)."""
        digest: str | None = None
        size = 0
        if result is not None:
            if size_bound(result.content) > BIG_RESULT_BYTES:
                # A big result's digest (serialise + SHA-256 of megabytes) runs in a worker thread:
                # on the loop it would stall every other call of the node meanwhile.
                # The pieces are kept on the content (an EncodedList) for the upload to send as they are.
                digest, size, pieces = await asyncio.to_thread(
                    json_digest_kept, result.content, sort_keys=True
                )
                result.content = EncodedList(result.content, pieces)
            else:
                digest, size = _content_digest(result)
        fields: dict[str, Any] = {
            "request_id": request_id,
            "tool": name,
            "caller": caller,
            "status": status,
            "exit_code": result.exit_code if result is not None else None,
            "duration_ms": int((time.monotonic() - started) * 1000),
            "output_sha256": digest,
            "output_bytes": size,
        }
        if queued:
            self._audit.enqueue("tool.finished", **fields)
            return None
        return await self._audit.append("tool.finished", **fields)
