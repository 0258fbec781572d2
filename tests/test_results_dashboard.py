"""The dashboard with a result too large for one message (issue 21): it shows the preview and offers the
whole result as a download (real server, real agent, real Chromium)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests import test_dashboard as dashboard
from tests.support.procs import AgentProc, ServerProc
from tests.test_dashboard import CHROMIUM, PageErrors, _sign_in_by_link

browser = dashboard.browser  # the dashboard tests' fixtures: one Chromium, one page per test
page = dashboard.page

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


async def test_a_big_result_is_offered_as_a_download(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], page: tuple[Page, PageErrors]
) -> None:
    pg, _ = page
    start_node("laptop")
    await _sign_in_by_link(pg, server_proc, server_proc.token("alice", "ws1"))
    await pg.get_by_role("link", name="laptop").click()
    await pg.get_by_role("button", name="Run a shell command").click()
    # 1,000,000 bytes of stdout (the node's default output cap is 1 MiB): over 1 MiB as JSON
    await pg.get_by_role("textbox", name="command (required)").fill("yes 0123456789 | head -c 1000000")
    await pg.get_by_role("button", name="Run", exact=True).click()
    offer = pg.get_by_test_id("artifact-download")
    await expect(offer).to_be_visible()
    await expect(pg.get_by_test_id("result")).to_contain_text("0123456789")  # the preview
    async with pg.expect_download() as info:
        await offer.click()
    download = await info.value
    whole = json.loads(await asyncio.to_thread(Path(await download.path()).read_text))
    assert whole["structuredContent"]["stdout"] == ("0123456789\n" * 100000)[:1000000]
