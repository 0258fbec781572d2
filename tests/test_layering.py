"""Layering rules that code review alone would let slip: spec does no I/O, sdk exports its curated API,
and the import graph goes only downward (surfaces never import each other; services never import a
surface or the composition root; server never imports the agent; spec and sdk stand alone)."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path

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


# -- the import graph ---------------------------------------------------------------------------------
# Every import counts: module level, inside functions and under TYPE_CHECKING (a type-only import is
# still a dependency the next change can turn into a runtime one).

SURFACES: dict[str, tuple[str, ...]] = {
    # name: its modules (a module, or a package and everything in it); one line why it is a surface.
    "tunnel": ("server.tunnel",),  # the node WebSocket endpoint
    "rpc": ("server.rpc",),  # the SDK clients' JSON-RPC WebSocket endpoint
    "api": ("server.api",),  # REST + SSE under /api/v1, /healthz, /metrics, the JWKS
    "fleet": ("server.fleet",),  # the admin enroll/revoke and recent-calls endpoints
    "mcp": ("server.mcp", "server.mcp_resources", "server.mcp_reply"),  # /mcp: one surface, three modules
    "planner": ("server.planner",),  # POST /api/v1/planner/runs (package: HTTP, loop, LLM providers)
    "artifacts": ("server.artifacts",),  # GET /api/v1/artifacts/{id}
    "dashboard": ("server.dashboard",),  # GET / and its static assets
    "oauth": ("server.oauth",),  # POST /oauth/token
    "replica": ("server.replica_endpoint",),  # WS /api/v1/cluster/link: calls from other replicas
}
ROOTS = {
    # Composition roots and entry points: they put the surfaces together, so they import anything.
    "server.app",  # build_app: the routes and the lifespan
    "server.cli",  # the cortex-server command
    "server.cli_help",  # its help texts
    "server.demo",  # serve --demo (prepares the local node)
    "server.serve",  # the serve runner: uvicorn plus the children a root asks for (the demo node)
}
# Everything else in server/ is a service the surfaces stand on: the edge (identity, http_errors,
# tool_exposure), sse (SSE framing, no endpoint of its own), approvals (what a node reports waiting; api
# serves it), admin (the operator commands behind cortex-server, store and auth only), state, router,
# registry, store, auth, results, artifact_store, limits, ... Services never import a surface or a root.

KNOWN_EDGES: set[tuple[str, str]] = set()  # none: the demo node starts through `python -m desktop_agent`


def _repo_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in ("server", "spec", "sdk", "desktop_agent"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    """Module → the repository modules it imports (any import statement anywhere in the file)."""
    modules = _repo_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
        graph[name] = _imported_modules(ast.parse(path.read_text(encoding="utf-8")), package) & modules.keys()
    return graph


def _surface_of(module: str) -> str | None:
    for surface, prefixes in SURFACES.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return surface
    return None


def _violations(graph: dict[str, set[str]], rule: Callable[[str, str], bool]) -> list[str]:
    return sorted(
        f"{source} imports {target}"
        for source, targets in graph.items()
        for target in targets
        if (source, target) not in KNOWN_EDGES and rule(source, target)
    )


def test_the_surface_list_names_real_modules() -> None:
    modules = set(_repo_modules())
    for prefixes in SURFACES.values():
        assert set(prefixes) <= modules
    assert modules >= ROOTS


def test_surfaces_never_import_each_other() -> None:
    def sideways(source: str, target: str) -> bool:
        mine, theirs = _surface_of(source), _surface_of(target)
        return mine is not None and theirs is not None and mine != theirs

    assert _violations(_graph(), sideways) == []


def test_services_depend_only_downward() -> None:
    def upward(source: str, target: str) -> bool:
        is_service = source.startswith("server") and source not in ROOTS and _surface_of(source) is None
        return is_service and _surface_of(target) is not None

    assert _violations(_graph(), upward) == []


def test_only_roots_import_the_roots() -> None:
    found = _violations(_graph(), lambda s, t: t in ROOTS and s not in ROOTS)
    assert found == [], "only composition roots import roots (a new entry point belongs in ROOTS)"


def test_the_server_never_imports_the_agent() -> None:
    assert _violations(_graph(), lambda s, t: s.startswith("server") and t.startswith("desktop_agent")) == []


def test_spec_and_sdk_stand_alone() -> None:
    def outward(source: str, target: str) -> bool:
        if source.startswith("spec"):
            return not target.startswith("spec")
        if source.startswith("sdk"):
            return target.startswith(("server", "desktop_agent"))
        return False

    assert _violations(_graph(), outward) == []


def test_the_known_exceptions_are_still_needed() -> None:
    # A stale allowlist entry would hide the next edge of the same kind: drop it once it is gone.
    graph = _graph()
    stale = [edge for edge in KNOWN_EDGES if edge[1] not in graph.get(edge[0], set())]
    assert stale == [], "this edge is gone: drop it from KNOWN_EDGES"


def test_the_cluster_runner_imports_no_agent() -> None:
    # `make cluster` starts the demo node as a program: server/ stays free of desktop_agent.
    for module in ("server/cluster_demo.py", "server/cluster_procs.py", "server/haproxy.py"):
        imported = _imported_modules(ast.parse((REPO / module).read_text()), "server")
        assert not any(name.split(".")[0] == "desktop_agent" for name in imported), module
    assert "desktop_agent" not in _modules_after_import("server.cluster_demo")


def test_only_the_registry_reaches_other_replicas() -> None:
    """Calls to a node on another replica go below the `CallRouter`: only the cluster registry makes
    replica links (the app mounts the holder's endpoint); no surface dials another replica itself."""
    allowed = {"server/cluster_registry.py", "server/replica_endpoint.py", "server/app.py"}
    offenders = []
    for path in sorted((REPO / "server").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
        imported = _imported_modules(ast.parse(path.read_text()), package)
        if rel not in allowed and rel != "server/replica_link.py" and "server.replica_link" in imported:
            offenders.append(rel)
    assert offenders == []


def test_no_cycles_even_through_imports_inside_functions() -> None:
    # A lazy import hides a cycle from the interpreter, not from the reader: none, counted every way.
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = [stack.pop()]
            while component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []
