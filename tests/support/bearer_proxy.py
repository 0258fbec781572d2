"""A loopback HTTP reverse proxy that adds `Authorization: Bearer <token>` to every request.

Where it sits: test support only. The official MCP conformance suite (a black-box client) has no way to
send a bearer token in server mode, so it talks to this proxy, which forwards each request to the real
Cortex server unchanged apart from the added header, and streams the answer (SSE included) back.

Rules:
1. Request and response are forwarded as they are — method, path, query, body, every end-to-end header,
   including a hostile `Host` or `Origin` — so the server's own header checks (DNS-rebinding protection,
   protocol-version headers) are what the suite sees.
2. Hop-by-hop headers are not forwarded (RFC 9110 §7.6.1); the proxy's HTTP client frames the body.
3. Response bodies are streamed chunk by chunk, so a long-lived SSE stream reaches the client as it is
   written, and a client that goes away closes the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx2
import uvicorn
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["BearerProxy", "bearer_proxy"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "authorization",
    }
)


class BearerProxy:
    """The ASGI app: one upstream request per incoming request, the bearer header added."""

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.client = httpx2.AsyncClient(timeout=httpx2.Timeout(60.0), follow_redirects=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        headers.append(("authorization", f"Bearer {self.token}"))
        url = self.upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        upstream = self.client.build_request(
            request.method, url, headers=headers, content=await request.body()
        )
        response = await self.client.send(upstream, stream=True)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        await StreamingResponse(body(), status_code=response.status_code, headers=out_headers)(
            scope, receive, send
        )


class _Server(uvicorn.Server):
    """uvicorn's server with an event set once it listens (it has only a polled flag)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


@contextlib.asynccontextmanager
async def bearer_proxy(upstream: str, token: str) -> AsyncIterator[str]:
    """Run the proxy on 127.0.0.1 (a free port) for the block; yields its base URL."""
    app = BearerProxy(upstream, token)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            await server.listening.wait()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
        await app.client.aclose()
        sock.close()
