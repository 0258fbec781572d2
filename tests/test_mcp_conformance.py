"""Tier (c): the official MCP conformance suite, a third-party black-box client, against `/mcp`.

A real server with a real node; the suite (`@modelcontextprotocol/conformance`, run by `npx` on Node 22,
which `npx -p node@22` fetches once into the npm cache) talks to it through a loopback proxy that adds
the bearer token, as the suite cannot send one. Every generic server scenario of both protocol revisions
runs; a check that does not pass must be listed in `tests/mcp_conformance_baseline.json` with the suite
fixture it needs, and a listed check that passes must leave the baseline.

Skipped only when `npx` is not installed (`.ci/run` installs nodejs and npm).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.bearer_proxy import bearer_proxy
from tests.support.procs import REPO, AgentProc, ServerProc

SUITE = "@modelcontextprotocol/conformance@0.2.0-alpha.12"
SCENARIOS: dict[str, list[str]] = {
    "2025-11-25": [
        "server-initialize",
        "server-session-lifecycle",
        "tools-list",
        "resources-list",
        "dns-rebinding-protection",
    ],
    "2026-07-28": [
        "server-stateless",
        "tools-list",
        "caching",
        "resources-list",
        "sep-2164-resource-not-found",
        "http-header-validation",
        "dns-rebinding-protection",
    ],
}
BASELINE = REPO / "tests" / "mcp_conformance_baseline.json"
PASSING = frozenset({"SUCCESS", "SKIPPED", "INFO"})
SCENARIO_TIMEOUT_S = 120.0
PARALLEL_RUNS = 1  # in parallel they contend for CPU (each starts Node): measured slower on 2 cores

pytestmark = pytest.mark.skipif(shutil.which("npx") is None, reason="needs npx (apt nodejs npm)")


def _baseline() -> dict[tuple[str, str, str], dict[str, Any]]:
    entries = json.loads(BASELINE.read_text(encoding="utf-8"))["expected"]
    keyed = {(e["spec_version"], e["scenario"], e["check"]): e for e in entries}
    assert len(keyed) == len(entries), "duplicate baseline entries"
    for entry in entries:
        assert entry["fixture"].startswith("test_") and entry["reason"], entry
    return keyed


def _read_checks(out: Path) -> list[dict[str, Any]] | None:
    found = sorted(out.rglob("checks.json"))
    return json.loads(found[0].read_text(encoding="utf-8")) if found else None


async def _run_scenario(url: str, version: str, scenario: str, out: Path) -> list[dict[str, Any]]:
    """The suite's checks for one scenario. npx itself failing (no checks written at all, e.g. a race in
    the shared npm cache with another npx) is retried once; a check's failure never is."""
    env = {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_prefer_offline": "true",  # versions are pinned: a cached copy is the right one
    }
    env.setdefault("npm_config_cache", str(Path.home() / ".npm"))  # one stable cache: fetched once
    outputs: list[str] = []
    for attempt in range(2):
        target = out / f"attempt-{attempt}"
        proc = await asyncio.create_subprocess_exec(
            "npx", "-y", "-p", "node@22", "-p", SUITE, "--",
            "conformance", "server", "--url", url, "--spec-version", version, "--scenario", scenario,
            "-o", str(target),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            async with asyncio.timeout(SCENARIO_TIMEOUT_S):
                output, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        checks = await asyncio.to_thread(_read_checks, target)
        if checks is not None:
            assert checks, f"{version} {scenario}: no checks ran"
            return checks
        outputs.append(f"exit {proc.returncode}:\n{output.decode(errors='replace')[-3000:]}")
    raise AssertionError(f"{version} {scenario}: the suite wrote no checks.json\n" + "\n".join(outputs))


@pytest.mark.timeout(600)  # the first run also fetches Node 22 and the suite into the npm cache
async def test_official_conformance_suite(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    start_node("laptop")
    baseline = _baseline()
    unexpected: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    summary: list[str] = []
    started = time.monotonic()
    runs = [(version, scenario) for version, scenarios in SCENARIOS.items() for scenario in scenarios]
    gate = asyncio.Semaphore(PARALLEL_RUNS)

    async def run(version: str, scenario: str, url: str) -> list[dict[str, Any]]:
        async with gate:
            return await _run_scenario(url, version, scenario, tmp_path / f"{version}-{scenario}")

    async with bearer_proxy(server_proc.url, server_proc.token()) as proxy:
        results = await asyncio.gather(*(run(v, s, f"{proxy}/mcp") for v, s in runs))
    for (version, scenario), checks in zip(runs, results, strict=True):
        counts: dict[str, int] = {}
        for check in checks:
            counts[check["status"]] = counts.get(check["status"], 0) + 1
            key = (version, scenario, check["id"])
            if check["status"] in PASSING:
                continue
            expected = baseline.get(key)
            if expected is not None and expected["status"] == check["status"]:
                seen.add(key)
            else:
                unexpected.append(f"{key}: {check['status']} {check.get('errorMessage', '')}")
        summary.append(f"{version} {scenario}: {dict(sorted(counts.items()))}")
    print("\n".join([*summary, f"conformance run: {time.monotonic() - started:.1f} s"]))
    assert not unexpected, "checks failing outside the baseline:\n" + "\n".join(unexpected)
    stale = sorted(set(baseline) - seen)
    assert not stale, f"baseline entries that no longer fail (remove them): {stale}"
