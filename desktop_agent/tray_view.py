"""What the tray icon shows: an agent status (and the waiting approvals) → colour, tooltip, commands, image.

Layering: a pure leaf under desktop_agent.tray (no pystray, no threads): `view_for` maps an `AgentStatus`
to a `TrayView`, `icon_image` draws the icon with Pillow. The colours are CONTRACT §8's: connected
green, connecting/backoff amber, disconnected grey, auth failed red, waiting approval blue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from PIL import Image, ImageDraw

from desktop_agent.connection import AgentState, AgentStatus

__all__ = [
    "AMBER",
    "BLUE",
    "GREEN",
    "GREY",
    "ICON_SIZE",
    "LOGIN_HINT",
    "RED",
    "Colour",
    "TrayView",
    "icon_for",
    "icon_image",
    "view_for",
]

Colour = tuple[int, int, int]
GREEN: Colour = (40, 170, 60)
AMBER: Colour = (240, 160, 20)
GREY: Colour = (128, 128, 128)
RED: Colour = (210, 40, 40)
BLUE: Colour = (30, 100, 220)

LOGIN_HINT = "cortex-agent login --server URL --name NAME"
ICON_SIZE = 64


@dataclass(frozen=True)
class TrayView:
    """Everything the icon shows for one agent status."""

    state: AgentState
    colour: Colour
    title: str  # the tooltip (the window name on xorg)
    can_connect: bool
    can_disconnect: bool
    approvals: tuple[tuple[str, str], ...] = ()  # (approval id, one-line summary), oldest first (rule 7)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def view_for(
    status: AgentStatus | None, name: str, now: float, approvals: tuple[tuple[str, str], ...] = ()
) -> TrayView:
    """Map an agent status (None: no credentials) and the waiting approvals to colour, tooltip, commands."""
    base = _status_view(status, name, now)
    if not approvals or status is None:
        return base
    node = f"Cortex node {name}" if name else "Cortex node"
    more = f" (+{len(approvals) - 1} more)" if len(approvals) > 1 else ""
    title = f"{node}: waiting for your approval: {approvals[0][1]}{more}"
    return TrayView(base.state, BLUE, title, base.can_connect, base.can_disconnect, approvals)


def _status_view(status: AgentStatus | None, name: str, now: float) -> TrayView:
    if status is None or status.state is AgentState.NO_CREDENTIALS:
        return TrayView(
            AgentState.NO_CREDENTIALS, GREY, f"Cortex: no node credential. Run `{LOGIN_HINT}`", False, False
        )
    node = f"Cortex node {name}" if name else "Cortex node"
    state, server = status.state, status.server
    if state is AgentState.CONNECTED:
        return TrayView(state, GREEN, f"{node}: connected to {server}", False, True)
    if state is AgentState.CONNECTING:
        return TrayView(state, AMBER, f"{node}: connecting to {server}", False, True)
    if state is AgentState.BACKOFF:
        retry = ""
        if status.next_retry_at is not None:
            wait = max(0, round(status.next_retry_at - now))
            retry = f"; next retry at {_clock(status.next_retry_at)} (in {wait} s)"
        reason = f" ({status.detail})" if status.detail else ""
        return TrayView(state, AMBER, f"{node}: reconnecting to {server}{retry}{reason}", False, True)
    if state is AgentState.AUTH_FAILED:
        retry = f"; retrying at {_clock(status.next_retry_at)}" if status.next_retry_at is not None else ""
        return TrayView(
            state,
            RED,
            f"{node}: {server} refused the node credential{retry}. Run `{LOGIN_HINT}`",
            True,
            False,
        )
    return TrayView(AgentState.DISCONNECTED, GREY, f"{node}: disconnected from {server}", True, False)


def icon_image(colour: Colour, size: int = ICON_SIZE, *, not_set_up: bool = False) -> Image.Image:
    """The tray icon: an anti-aliased disc of `colour` on a transparent square.

    Drawn at 4x and downscaled with LANCZOS, so its edge is smooth at any tray size. A thin white ring
    inside the disc gives it a shape on a tray of the same colour; the centre keeps the state's colour.
    `not_set_up` draws a ring with a dot instead of a disc: the node has no credential yet, a state that
    must not look like "disconnected".
    """
    scale = 4
    big = size * scale
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    margin = max(scale, big // 16)
    box = (margin, margin, big - 1 - margin, big - 1 - margin)
    fill = (*colour, 255)
    if not_set_up:
        draw.ellipse(box, outline=fill, width=max(scale, big // 9))
        dot = big // 6
        draw.ellipse((big // 2 - dot, big // 2 - dot, big // 2 + dot, big // 2 + dot), fill=fill)
    else:
        draw.ellipse(box, fill=fill)
        inset = big * 7 // 32
        draw.ellipse(
            (inset, inset, big - 1 - inset, big - 1 - inset),
            outline=(255, 255, 255, 230),
            width=max(scale, big // 24),
        )
    return image.resize((size, size), Image.Resampling.LANCZOS)


def icon_for(view: TrayView, size: int = ICON_SIZE) -> Image.Image:
    return icon_image(view.colour, size, not_set_up=view.state is AgentState.NO_CREDENTIALS)
