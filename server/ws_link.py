"""The Starlette WebSocket as a `spec.link.Link`: the one adapter the tunnel and the client RPC share.

Layering: Starlette/uvicorn (transport) → `StarletteLink` (this module) → `spec.link.pump` →
`spec.session.RpcSession`. Rules as in `spec.link`; Starlette specifics: a `websocket.disconnect`
message carries the close code the other side sent, and receiving after the socket is gone raises
`RuntimeError`, which is the end of the link like a disconnect.

`accept_link` is the one accept of both endpoints: it answers `BATCHED_SUBPROTOCOL` when the client
offered it and the server's frame limit takes joined frames (the link then joins messages into frames,
`spec.frames`), `SUBPROTOCOL` otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from spec.frames import BatchedLink, takes_joined_frames
from spec.link import Frame, Link
from spec.protocol import BATCHED_SUBPROTOCOL, SUBPROTOCOL

__all__ = ["StarletteLink", "accept_link"]


async def accept_link(websocket: WebSocket, name: str, max_frame_bytes: int) -> Link:
    """Accept the handshake (already authenticated) with the best subprotocol both ends speak."""
    link = StarletteLink(websocket)
    offered = websocket.scope.get("subprotocols", ())
    if BATCHED_SUBPROTOCOL in offered and takes_joined_frames(max_frame_bytes):
        await link.accept(BATCHED_SUBPROTOCOL)
        return BatchedLink(link, name=f"frames:{name}")
    await link.accept(SUBPROTOCOL)
    return link


class StarletteLink:
    """An accepted (or about to be accepted) Starlette WebSocket as a link."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.close_code: int | None = None
        self.close_reason = ""
        self.send: Callable[[str], Awaitable[None]] = websocket.send_text

    async def accept(self, subprotocol: str) -> None:
        await self.websocket.accept(subprotocol=subprotocol)

    async def receive(self) -> Frame | None:
        try:
            message = await self.websocket.receive()
        except (WebSocketDisconnect, RuntimeError):  # receive after the socket closed
            return None
        if message["type"] == "websocket.disconnect":
            if self.close_code is None:
                self.close_code = int(message.get("code") or 1005)
                self.close_reason = str(message.get("reason") or "")
            return None
        text: str | None = message.get("text")
        if text is not None:
            return text
        data: bytes = message.get("bytes") or b""
        return data

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        await self.websocket.close(code=code, reason=reason)
