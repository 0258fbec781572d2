"""A hand-driven node on a real tunnel socket, for hostile-node tests and benchmarks.

`RawNode` answers the server's `initialize`, `tools/list`, `ping` and `tools/call` (echoing `text`) from
a reader task, counts what it was asked, and lets the test send any frame it likes beside that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection

__all__ = ["ECHO_TOOL", "RawNode"]

ECHO_TOOL: dict[str, Any] = {
    "name": "echo",
    "description": "echo",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


class RawNode:
    def __init__(
        self,
        ws: ClientConnection,
        *,
        tools: list[dict[str, Any]] | None = None,
        info: dict[str, Any] | None = None,
        list_delay: float = 0.0,
        answer: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.ws = ws
        self.tools = tools if tools is not None else [ECHO_TOOL]
        self.info = info or {"hostname": "raw", "os": "Linux", "arch": "x86_64", "agent_version": "0"}
        self.list_delay = list_delay
        self.answer = answer
        """The `tools/call` result for the call's arguments, when given (default: echo `text`)."""
        self.asked: dict[str, int] = {}
        self.lists_in_flight = 0
        self.max_lists_in_flight = 0
        self.list_answered = asyncio.Event()  # set after each tools/list answer (clear it to wait again)
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self.hold: asyncio.Event | None = None  # set: tools/call answers wait for it
        self.batched = ws.subprotocol == "cortex.v1.batched"  # frames of one or more messages
        self.frames = 0
        self.messages = 0

    async def __aenter__(self) -> RawNode:
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for frame in self.ws:
                self.frames += 1
                for part in str(frame).split("\n") if self.batched else [frame]:
                    self._take(json.loads(part))

    def _take(self, message: dict[str, Any]) -> None:
        self.messages += 1
        if "method" in message and "id" in message:
            task = asyncio.create_task(self._answer(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif "method" not in message:
            self.replies.put_nowait(message)

    async def _answer(self, message: dict[str, Any]) -> None:
        method = message["method"]
        self.asked[method] = self.asked.get(method, 0) + 1
        result: Any = {}
        if method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "raw", "version": "0"},
                "node": self.info,
                "audit_head": {"seq": 0, "hash": ""},
            }
        elif method == "tools/list":
            self.lists_in_flight += 1
            self.max_lists_in_flight = max(self.max_lists_in_flight, self.lists_in_flight)
            try:
                if self.list_delay:
                    await asyncio.sleep(self.list_delay)  # a slow node: time is the behaviour here
            finally:
                self.lists_in_flight -= 1
            result = {"tools": self.tools}
            await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}))
            self.list_answered.set()
            return
        elif method == "tools/call":
            if self.hold is not None:
                await self.hold.wait()
            arguments = (message.get("params") or {}).get("arguments", {})
            if self.answer is not None:
                result = self.answer(arguments)
            else:
                result = {"content": [{"type": "text", "text": arguments.get("text", "")}], "isError": False}
        await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}))

    async def request(self, method: str, id_: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send our own request and wait for its answer (other answers arriving first are dropped)."""
        frame: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            frame["params"] = params
        await self.ws.send(json.dumps(frame))
        return await self.reply(id_)

    async def reply(self, id_: Any) -> dict[str, Any]:
        while True:
            message = await self.replies.get()
            if message.get("id") == id_:
                return message
