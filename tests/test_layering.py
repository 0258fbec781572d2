"""Layering rules that code review alone would let slip: spec does no I/O, sdk exports its curated API."""

from __future__ import annotations

import json
import subprocess
import sys

import sdk
from tests.support.procs import REPO

# (http.server/socketserver are left out: jsonrpcserver's package __init__ imports its demo HTTP server.)
IO_LIBRARIES = {"websockets", "starlette", "uvicorn", "httpx2", "httpx", "aiohttp", "requests", "anyio"}


def _modules_after_import(*modules: str) -> set[str]:
    code = f"import json, sys; import {', '.join(modules)}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True, timeout=60
    )
    return {name.split(".")[0] for name in json.loads(done.stdout)}


def test_spec_imports_no_io_library() -> None:
    loaded = _modules_after_import(
        "spec.errors", "spec.messages", "spec.peer", "spec.session", "spec.manifest", "spec.schemas"
    )
    assert loaded & IO_LIBRARIES == set()


def test_the_peer_core_is_sans_io() -> None:
    # The core (model, errors, peer) runs without an event loop; only the dispatcher on top uses asyncio.
    loaded = _modules_after_import("spec.errors", "spec.messages", "spec.peer")
    assert "asyncio" not in loaded
    assert loaded & IO_LIBRARIES == set()


def test_sdk_exports_the_contract_api() -> None:
    contract = {
        "Client", "AsyncClient", "CortexError", "NodeNotFound", "NodeDisconnected", "CallCancelled",
        "CallTimeout", "AuthError",
    }  # fmt: skip
    assert contract <= set(sdk.__all__)
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None
    for name in contract - {"Client", "AsyncClient"}:
        assert issubclass(getattr(sdk, name), sdk.CortexError)
