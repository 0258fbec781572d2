"""What the server knows of a node's calls waiting for their owner's approval: it shows them, never answers.

Layering: the tunnel (`server.tunnel`) hands each node's `notifications/approvals` to `observe`, which
keeps the list on the node's `NodeEntry`; `node_approvals` serves `GET /api/v1/nodes/{node}/approvals`
(same authorization as the node: another workspace's node is 404). Only the node's owner can answer, on
the node itself (desktop_agent.approval), so this module has no way to send anything to the node.

Rules:
1. A notification that fails its schema (spec/schemas/methods.schema.json `notifications/approvals`) is
   ignored and logged; a stale one (`seq` not above the last seen on this link) is ignored.
2. Each request's `arguments` is kept only when its JSON is at most `MAX_ARGUMENTS_CHARS`; a larger one
   is replaced by a note (the node already redacted and shortened it).
3. A node that disconnects has nothing waiting: its calls were withdrawn when the link dropped.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.registry import NodeEntry
from spec.schemas import method_schema

__all__ = ["MAX_ARGUMENTS_CHARS", "METHOD", "clear", "node_approvals", "observe"]

logger = logging.getLogger(__name__)

METHOD = "notifications/approvals"
MAX_ARGUMENTS_CHARS = 4096


@cache
def _validator() -> Draft202012Validator:
    schema = method_schema(METHOD, "params")
    assert schema is not None
    return Draft202012Validator(schema)


def observe(entry: NodeEntry | None, params: Any) -> bool:
    """Rules 1-2: take a node's list of waiting approvals; True when it was taken."""
    if entry is None:
        return False
    error = next(iter(_validator().iter_errors(params)), None)
    if error is not None:
        logger.warning("node %s sent a bad %s: %.200s", entry.name, METHOD, error.message)
        return False
    if params["seq"] <= entry.approvals_seq:
        return False
    kept = []
    for item in params["approvals"]:
        shown = {k: item.get(k) for k in ("id", "request_id", "tool", "arguments", "caller", "since")}
        try:
            size = len(json.dumps(shown["arguments"], ensure_ascii=False))
        except (TypeError, ValueError):
            size = MAX_ARGUMENTS_CHARS + 1
        if size > MAX_ARGUMENTS_CHARS:
            shown["arguments"] = f"[{size} characters, not kept by the server]"
        kept.append(shown)
    entry.approvals_seq = params["seq"]
    entry.approvals = kept
    return True


def clear(entry: NodeEntry | None) -> None:
    """Rule 3: the link is gone, and with it every call that waited."""
    if entry is not None:
        entry.approvals = []
        entry.approvals_seq = 0


async def node_approvals(request: Request, state: Any, caller: Any) -> Response:
    """`GET /api/v1/nodes/{node}/approvals`: read-only; answering happens on the node only."""
    entry = await state.router.find(caller, request.path_params["node"])  # another workspace: 404
    waiting = entry.approvals if entry.status != "disconnected" else []
    return JSONResponse({"node": entry.name, "approvals": waiting})
