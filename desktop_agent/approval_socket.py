"""The node owner's control socket: `<home>/approval.sock`, and `cortex-agent approvals|approve|deny`.

Layering: beside `desktop_agent.approval` (the waiting room it answers); `ControlSocket` is started and
closed by the engine on the agent's loop; `cli_*` are the terminal side, plain blocking sockets.

Protocol: JSON Lines over a Unix stream socket, one request and one reply per line:
``{"op":"list"}`` → ``{"ok":true,"approvals":[...]}``;
``{"op":"approve","id":ID,"minutes":N?}`` / ``{"op":"deny","id":ID}`` → ``{"ok":true}``;
a failure is ``{"ok":false,"error":CODE,"message":TEXT}`` with CODE ``unknown_id`` | ``bad_request``.

Rules:
1. Owner only: the socket file is mode 0600 in the agent home, and every connection's peer uid
   (SO_PEERCRED) must equal the agent's uid; any other peer is closed without a reply.
2. Hostile input loses nothing: a line is at most `MAX_LINE` bytes, a connection idle for
   `idle_timeout_s` (default `IDLE_TIMEOUT_S`) is closed, at most `MAX_CLIENTS` connections are served
   at once; a bad request gets ``bad_request`` and the connection stays usable.
3. A stale socket file (an agent that died) is replaced on start; the home lock (desktop_agent.home_lock)
   keeps two live agents off one home. The file is removed on close.
4. Paths longer than a socket address allows are reached through ``/proc/self/fd/<home fd>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desktop_agent.approval import ApprovalRoom, UnknownApproval, local_user
from spec import json_limits

__all__ = [
    "SOCKET_FILE",
    "ControlSocket",
    "NoAgent",
    "cli_answer",
    "cli_list",
    "control_request",
]

logger = logging.getLogger(__name__)

SOCKET_FILE = "approval.sock"
MAX_LINE = 64 * 1024
IDLE_TIMEOUT_S = 30.0
MAX_CLIENTS = 8
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes with the NUL; keep a margin


class NoAgent(ConnectionError):
    """No agent answers on this home's control socket."""


@contextlib.contextmanager
def _short_path(home: Path) -> Iterator[str]:
    """Rule 4: the socket path itself, or one through an open descriptor of the home when too long."""
    path = str(home / SOCKET_FILE)
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_FILE}"
    finally:
        os.close(fd)


def _peer_uid(sock: Any) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)  # Linux; elsewhere every peer is refused (rule 1)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


class ControlSocket:
    """Serves the owner's answers to `room` on `<home>/approval.sock` (rules 1-4)."""

    def __init__(self, home: Path, room: ApprovalRoom) -> None:
        self.home = home
        self.room = room
        self.path = home / SOCKET_FILE
        self._server: asyncio.AbstractServer | None = None
        self._clients = 0
        self._uid = os.getuid()
        self.idle_timeout_s = IDLE_TIMEOUT_S

    async def start(self) -> None:
        if self._server is not None:
            return
        sock = await asyncio.to_thread(self._bind)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)

    def _bind(self) -> socket.socket:
        self.home.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _short_path(self.home) as path:
                with contextlib.suppress(FileNotFoundError):
                    if self.path.is_socket():  # rule 3: a dead agent's socket; never unlink anything else
                        os.unlink(self.path)
                # fchmod on a socket does not reach its file: chmod the path right after the bind (a peer
                # in between still meets rule 1's uid check).
                sock.bind(path)
            os.chmod(self.path, 0o600)
            sock.listen(MAX_CLIENTS)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
        with contextlib.suppress(OSError):
            if self.path.is_socket():
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = _peer_uid(writer.get_extra_info("socket"))
            if uid != self._uid:  # rule 1
                logger.warning("approval socket: refused a peer with uid %s", uid)
                return
            if self._clients >= MAX_CLIENTS:  # rule 2
                return
            self._clients += 1
            try:
                await self._session(reader, writer, local_user(uid))
            finally:
                self._clients -= 1
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    line = await reader.readline()
            except ValueError:  # longer than MAX_LINE: the stream cannot be resynchronised
                writer.write(_reply(False, "bad_request", f"request longer than {MAX_LINE} bytes"))
                await writer.drain()
                return
            if not line:
                return
            writer.write(self._handle(line, user))
            await writer.drain()

    def _handle(self, line: bytes, user: str) -> bytes:
        try:
            request = json_limits.loads(line)
        except ValueError:  # not JSON, or nested past the limit (a RecursionError closed the connection)
            return _reply(False, "bad_request", "not a JSON line")
        if not isinstance(request, dict):
            return _reply(False, "bad_request", "a request is a JSON object")
        op = request.get("op")
        if op == "list":
            return _line({"ok": True, "approvals": self.room.to_json()})
        if op not in ("approve", "deny"):
            return _reply(False, "bad_request", "op must be list, approve or deny")
        approval_id, minutes = request.get("id"), request.get("minutes")
        if not isinstance(approval_id, str):
            return _reply(False, "bad_request", "id must be a string")
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int | float)):
            return _reply(False, "bad_request", "minutes must be a number")
        try:
            self.room.answer(approval_id, approve=op == "approve", approver=user, via="cli", minutes=minutes)
        except UnknownApproval:
            return _reply(False, "unknown_id", f"no call waits for approval under id {approval_id[:64]!r}")
        except ValueError as exc:
            return _reply(False, "bad_request", str(exc))
        return _line({"ok": True})


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"


def _reply(ok: bool, error: str, message: str) -> bytes:
    return _line({"ok": ok, "error": error, "message": message})


# -- the terminal side ------------------------------------------------------------------------------------
def control_request(home: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the agent running on `home`; NoAgent when none answers."""
    if not (home / SOCKET_FILE).exists():
        raise NoAgent(f"no agent is running on {home} (no {SOCKET_FILE})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _short_path(home) as path:
                sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoAgent(f"no agent is running on {home} ({exc.strerror})") from exc
        sock.sendall(_line(request))
        data = b""
        while not data.endswith(b"\n") and len(data) <= MAX_LINE * 64:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise NoAgent(f"the agent on {home} closed the control socket without an answer")
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise NoAgent(f"the agent on {home} answered nonsense")
    return reply


def _ask(home: Path, request: dict[str, Any]) -> dict[str, Any] | int:
    try:
        return control_request(home, request)
    except NoAgent as exc:
        print(f"cortex-agent: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"cortex-agent: the control socket of {home} failed: {exc}", file=sys.stderr)
        return 1


def cli_list(home: Path, as_json: bool = False) -> int:
    """`cortex-agent approvals`: what waits (exit 0), or exit 1 when no agent runs on the home."""
    reply = _ask(home, {"op": "list"})
    if isinstance(reply, int):
        return reply
    approvals = reply.get("approvals") or []
    if as_json:
        print(json.dumps({"approvals": approvals}, ensure_ascii=False))
        return 0
    if not approvals:
        print("no calls wait for approval")
        return 0
    for a in approvals:
        caller = a.get("caller") or {}
        args = json.dumps(a.get("arguments"), ensure_ascii=False)
        print(
            f"{a.get('id')}  {a.get('tool')}  {args}  caller {caller.get('sub')} ({caller.get('ws')})  "
            f"waiting since {a.get('since')}"
        )
    print("answer with: cortex-agent approve ID [--for MINUTES] | cortex-agent deny ID", file=sys.stderr)
    return 0


def cli_answer(home: Path, approval_id: str, *, approve: bool, minutes: float | None = None) -> int:
    """`cortex-agent approve|deny ID`: exit 0 answered, 1 unknown id or no agent, 2 a bad value."""
    request: dict[str, Any] = {"op": "approve" if approve else "deny", "id": approval_id}
    if minutes is not None:
        request["minutes"] = minutes
    reply = _ask(home, request)
    if isinstance(reply, int):
        return reply
    if reply.get("ok"):
        what = "approved" if approve else "denied"
        scope = f" (this caller, for {minutes:g} minutes)" if approve and minutes is not None else ""
        print(f"{approval_id} {what}{scope}")
        return 0
    print(f"cortex-agent: {reply.get('message', reply.get('error'))}", file=sys.stderr)
    return 2 if reply.get("error") == "bad_request" else 1
