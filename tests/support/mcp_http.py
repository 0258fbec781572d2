"""Reading a raw MCP streamable-HTTP answer (JSON body or one SSE event) in tests that speak /mcp by hand."""

from __future__ import annotations

import json
from typing import Any

import httpx2

__all__ = ["mcp_answer"]


def mcp_answer(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer in `response`: its JSON body, or the SSE event carrying an ``id``."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                data: dict[str, Any] = json.loads(line[5:])
                return data
        raise AssertionError(response.text[:500])
    answer: dict[str, Any] = response.json()
    return answer
