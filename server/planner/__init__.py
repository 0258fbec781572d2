"""The built-in planner: `POST /api/v1/planner/runs` streams an LLM's work on a goal as Server-Sent Events.

Layering: this module is the HTTP surface (authentication, body checks, SSE framing, run bookkeeping);
`server.planner.loop` is the loop, `server.planner.providers` the LLM clients. The provider settings are
read once at app start (`PlannerService.from_env`, env `CORTEX_LLM_*`) into a value object.

Rules:
1. No provider configured → HTTP 503 ``{"error": "planner_unconfigured", "message": how to configure}``.
2. A run lives in its own task; the stream ends with exactly one ``done`` or ``error`` event.
3. The client dropping the stream cancels the run (and its running tool call on the node);
   ``DELETE /api/v1/planner/runs/{run_id}`` by the same user does the same from elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server import sse
from server.http_errors import ApiError, http_error
from server.identity import authenticate, state_of
from server.planner.loop import DEFAULT_MAX_STEPS, MAX_STEPS_LIMIT, PlannerRun
from server.planner.providers import UNCONFIGURED_MESSAGE, LlmConfig
from server.router import Caller
from server.user_revocation import end_event_queue
from spec.errors import RpcError

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["LlmConfig", "PlannerRun", "PlannerService", "routes"]

logger = logging.getLogger(__name__)

_END: tuple[str, dict[str, Any]] = ("", {})


@dataclass
class PlannerService:
    config: LlmConfig
    runs: dict[str, tuple[Caller, asyncio.Task[None]]] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> PlannerService:
        config = LlmConfig.from_env()
        if config.configured:
            logger.info("planner: provider %s, model %s", config.provider, config.model)
        else:
            logger.info("planner: no LLM provider configured (CORTEX_LLM_PROVIDER)")
        return cls(config)

    def start(self, run: PlannerRun) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        """Start `run` in its own task; its events arrive on the returned queue, then `_END`."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

        async def emit(event: str, data: dict[str, Any]) -> None:
            queue.put_nowait((event, data))

        async def body() -> None:
            try:
                await run.run(emit)
            except asyncio.CancelledError:
                queue.put_nowait(
                    (
                        "error",
                        {"run_id": run.run_id, "error": "cancelled", "message": "the run was cancelled"},
                    )
                )
                raise
            except Exception as exc:
                logger.warning("planner run %s failed: %s", run.run_id, type(exc).__name__, exc_info=True)
                queue.put_nowait(
                    ("error", {"run_id": run.run_id, "error": _error_code(exc), "message": _error_text(exc)})
                )
            finally:
                self.runs.pop(run.run_id, None)
                queue.put_nowait(_END)

        task = asyncio.create_task(body(), name=f"planner:{run.run_id}")
        self.runs[run.run_id] = (run.user, task)
        return queue

    def cancel(self, run_id: str, caller: Caller) -> bool:
        entry = self.runs.get(run_id)
        if entry is None:
            return False
        owner = entry[0]
        if not (caller.is_admin or (owner.sub == caller.sub and owner.ws == caller.ws)):
            return False
        entry[1].cancel()
        return True


def _error_code(exc: BaseException) -> str:
    module = type(exc).__module__.split(".")[0]
    return "llm_error" if module in ("openai", "anthropic", "httpx", "httpx2") else "internal"


def _error_text(exc: BaseException) -> str:
    if _error_code(exc) == "llm_error":
        status = getattr(exc, "status_code", None)
        return f"the LLM provider failed: {type(exc).__name__}" + (f" (HTTP {status})" if status else "")
    return "the planner failed unexpectedly (see the server log)"


def planner_service(state: ServerState) -> PlannerService:
    service = state.planner
    if not isinstance(service, PlannerService):
        raise RuntimeError("the planner is not running (build_app's lifespan starts it)")
    return service


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "bad_request", "the body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(
            400, "bad_request", 'the body must be {"goal": "...", "node"?: "...", "max_steps"?: N}'
        )
    goal, node, max_steps = body.get("goal"), body.get("node"), body.get("max_steps", DEFAULT_MAX_STEPS)
    if not isinstance(goal, str) or not goal.strip():
        raise ApiError(400, "bad_request", "goal must be a non-empty string")
    if node is not None and not isinstance(node, str):
        raise ApiError(400, "bad_request", "node must be a string")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= MAX_STEPS_LIMIT:
        raise ApiError(400, "bad_request", f"max_steps must be an integer from 1 to {MAX_STEPS_LIMIT}")
    return {"goal": goal, "node": node, "max_steps": max_steps}


async def create_run(request: Request) -> Response:
    try:
        caller = authenticate(request)
        state = state_of(request)
        service = planner_service(state)
        if not service.config.configured:
            raise ApiError(503, "planner_unconfigured", UNCONFIGURED_MESSAGE)
        body = await _body(request)
        if body["node"] is not None:
            await state.router.find(caller, body["node"])  # 404 for a node the caller cannot see
    except ApiError as exc:
        return exc.response()
    except RpcError as exc:
        return http_error(exc).response()
    run = PlannerRun(state, service.config, caller, body["goal"], body["node"], body["max_steps"])
    logger.info("planner run %s for %s/%s started", run.run_id, caller.ws, caller.sub)
    queue = service.start(run)
    task = service.runs[run.run_id][1]

    async def stream() -> AsyncIterator[str]:
        revocable = state.live_callers.track(
            caller.sub, caller.ws, caller.iat, lambda: end_event_queue(queue)
        )
        try:
            with revocable:
                async for item in sse.with_keepalive(queue):
                    if item is None:
                        yield sse.KEEPALIVE
                        continue
                    event, data = item
                    if not event:
                        return
                    yield sse.frame(event, data)
        finally:
            # The client went away (or the stream ended): a run nobody watches is cancelled.
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return sse.event_stream_response(stream(), {"X-Cortex-Run": run.run_id})


async def cancel_run(request: Request) -> Response:
    try:
        caller = authenticate(request)
        if not planner_service(state_of(request)).cancel(request.path_params["run_id"], caller):
            raise ApiError(404, "run_not_found", "no such planner run")
    except ApiError as exc:
        return exc.response()
    return JSONResponse({"cancelled": True})


def routes() -> list[Route]:
    return [
        Route("/api/v1/planner/runs", create_run, methods=["POST"]),
        Route("/api/v1/planner/runs/{run_id}", cancel_run, methods=["DELETE"]),
    ]
