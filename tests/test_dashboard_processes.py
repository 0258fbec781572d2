"""Tier (c): the dashboard's Processes tab in a real Chromium against a real server and a real agent:
start a process, watch its output arrive live, answer it through stdin, kill it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from sdk import AsyncClient
from tests.support.procs import AgentProc, ServerProc
from tests.test_dashboard import CHROMIUM, PageErrors, _sign_in_by_link, browser, page, shots

__all__ = ["browser", "page", "shots"]  # the fixtures this module borrows

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


async def test_processes_tab_lists_follows_answers_and_kills(
    server_proc: ServerProc,
    start_node: Callable[..., AgentProc],
    page: tuple[Page, PageErrors],
    shots: Path,
) -> None:
    pg, _ = page
    start_node("laptop")
    await _sign_in_by_link(pg, server_proc, server_proc.token("alice", "ws1"), "#/nodes/laptop/processes")
    await expect(pg.get_by_text("No background processes on this node.")).to_be_visible()

    await pg.get_by_label("Command").fill("echo 'What is your name?'; read n; echo \"hello $n\"; sleep 600")
    await pg.get_by_label("Name").fill("greeter")
    await pg.get_by_role("button", name="Start").click()
    output = pg.locator(".process-output")
    await expect(output).to_contain_text("What is your name?")  # live, through long-polling process_read
    row = pg.locator("table.processes tbody tr")
    await expect(row).to_have_count(1)
    await expect(row.first).to_contain_text("greeter")
    await expect(row.first).to_contain_text("running")

    await pg.get_by_label("Input").fill("Cortex")
    await pg.get_by_role("button", name="Send", exact=True).click()
    await expect(output).to_contain_text("hello Cortex")
    await pg.screenshot(path=shots / "20-processes-running.png", full_page=True)

    await pg.get_by_role("button", name="Kill").click()
    await expect(row.first).to_contain_text("exited -15")
    await expect(output).to_contain_text("[exited with code -15]")
    await pg.screenshot(path=shots / "21-processes-killed.png", full_page=True)

    # Read as users read it: `audit/read` answers once every queued record is written (the last call's
    # `tool.finished` may still be queued when its answer is out).
    async with AsyncClient(server_proc.url, token=server_proc.token("alice", "ws1")) as client:
        records = (await client.audit("laptop", limit=500))["records"]
    tools = {r["tool"] for r in records if r["event"] == "tool.finished"}
    assert {"process_start", "process_list", "process_read", "process_write", "process_kill"} <= tools
    assert any(r["event"] == "process.exited" for r in records)
