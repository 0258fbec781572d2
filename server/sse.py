"""Server-Sent Events, shared by the node event stream (`server.api`) and planner runs (`server.planner`).

Both stream items from an asyncio queue; when nothing has come for a while a comment line keeps
proxies and clients from timing the stream out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

__all__ = ["KEEPALIVE", "event_stream_response", "frame", "with_keepalive"]

KEEPALIVE = ": keep-alive\n\n"


def frame(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def with_keepalive(queue: asyncio.Queue[Any], interval: float = 15.0) -> AsyncIterator[Any]:
    """The queue's items as they come; None after each `interval` seconds without one."""
    while True:
        try:
            async with asyncio.timeout(interval):
                item = await queue.get()
        except TimeoutError:
            yield None
            continue
        yield item


def event_stream_response(
    stream: AsyncIterator[str], headers: dict[str, str] | None = None
) -> StreamingResponse:
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
