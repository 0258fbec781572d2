"""Local stand-ins for LLM APIs: HTTP servers speaking the real OpenAI chat-completions and Anthropic
messages wire formats, answering from a script of turns (the only stand-in the test suite allows).

A turn is ``Turn(text=..., calls=[(tool_name, arguments)])``; `arguments` is a dict, or a raw string
(sent as-is in OpenAI's ``function.arguments``, to script malformed JSON). Every request body received
is kept in ``requests`` (its headers, lower-cased, in ``headers``) so a test can check what the planner
told the model. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeLLM", "Turn"]


@dataclass
class Turn:
    text: str = ""
    calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    # Built from the request when it arrives (to echo an id a tool returned earlier in the run).
    make: Callable[[dict[str, Any]], Turn] | None = None


class FakeLLM:
    def __init__(self, wire: str, script: list[Turn]) -> None:
        assert wire in ("openai", "anthropic")
        self.wire = wire
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        port = self._server.server_address[1]
        root = f"http://127.0.0.1:{port}"
        return root + "/v1" if self.wire == "openai" else root

    def env(self, model: str = "scripted-model", api_key: str = "sk-test-secret-123") -> dict[str, str]:
        return {
            "CORTEX_LLM_PROVIDER": self.wire,
            "CORTEX_LLM_MODEL": model,
            "CORTEX_LLM_BASE_URL": self.base_url,
            "CORTEX_LLM_API_KEY": api_key,
        }

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _next_turn(self, body: dict[str, Any], headers: dict[str, str]) -> Turn:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            if self.script:
                turn = self.script.pop(0)
                return turn.make(body) if turn.make is not None else turn
        return Turn(text="(script exhausted)")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if fake.wire == "openai" and self.path.rstrip("/").endswith("/chat/completions"):
                    payload = _openai_reply(
                        fake._next_turn(body, {k.lower(): v for k, v in self.headers.items()}),
                        len(fake.requests),
                        body,
                    )
                elif fake.wire == "anthropic" and self.path.split("?")[0].rstrip("/").endswith(
                    "/v1/messages"
                ):
                    payload = _anthropic_reply(
                        fake._next_turn(body, {k.lower(): v for k, v in self.headers.items()}),
                        len(fake.requests),
                        body,
                    )
                else:
                    payload, status = {"error": {"message": f"no route {self.path}"}}, 404
                    self._send(payload, status)
                    return
                self._send(payload, 200)

            def _send(self, payload: dict[str, Any], status: int) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _openai_reply(turn: Turn, n: int, body: dict[str, Any]) -> dict[str, Any]:
    calls = [
        {
            "id": f"call_{n}_{i}",
            "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
        }
        for i, (name, args) in enumerate(turn.calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 1700000000,
        "model": body.get("model", "scripted-model"),
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _anthropic_reply(turn: Turn, n: int, body: dict[str, Any]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if turn.text:
        content.append({"type": "text", "text": turn.text})
    for i, (name, args) in enumerate(turn.calls):
        content.append({"type": "tool_use", "id": f"toolu_{n}_{i}", "name": name, "input": args})
    return {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "scripted-model"),
        "content": content,
        "stop_reason": "tool_use" if turn.calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
