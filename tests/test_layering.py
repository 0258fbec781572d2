"""Layering rules that code review alone would let slip: spec does no I/O, sdk exports its curated API."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import typing

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


def _imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Every module an AST imports, at any depth (TYPE_CHECKING blocks and function bodies included)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_only_the_cli_imports_the_composition_root() -> None:
    allowed = {"server/cli.py"}
    offenders = []
    for path in sorted((REPO / "server").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
        if rel not in allowed and "server.app" in _imported_modules(ast.parse(path.read_text()), package):
            offenders.append(rel)
    assert offenders == []


def test_server_state_is_typed_services_without_extras() -> None:
    from server.state import ServerState

    names = {f.name for f in dataclasses.fields(ServerState)}
    assert "extras" not in names
    assert not hasattr(ServerState, "extras")
    hints = typing.get_type_hints(ServerState)
    assert all(hints[name] is not typing.Any and typing.get_origin(hints[name]) is not dict for name in names)
    # Behaviour lives in the services, not on the state (node_record/on_revoked: server.nodes).
    assert [n for n in vars(ServerState) if callable(vars(ServerState)[n]) and not n.startswith("_")] == []


def test_product_packages_have_no_import_cycle() -> None:
    # TYPE_CHECKING imports count too: a cycle there is still a dependency loop between layers.
    from bench.import_graph import import_graph, strongly_connected

    assert strongly_connected(import_graph(REPO, typing=True)) == []
