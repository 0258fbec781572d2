"""Tier (c), real Chromium: the dashboard asks before a `#token=` link replaces the signed-in identity,
and shows a node whose audit log was rewound (red badge; admins can acknowledge it).

Against a real `cortex-server serve` process; Playwright drives Debian's /usr/bin/chromium.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from desktop_agent.tools.browser import CHROMIUM_ARGS, DEFAULT_EXECUTABLE
from server import admin
from server.store import ServerStore
from tests.support.procs import ServerProc

WAIT_MS = 20_000
expect.set_options(timeout=WAIT_MS)
pytestmark = pytest.mark.skipif(not Path(DEFAULT_EXECUTABLE).exists(), reason="needs Debian's chromium")


@pytest.fixture
def rewound_server(tmp_path: Path) -> Iterator[ServerProc]:
    """A server whose store says node `laptop` (never connected in this run) had its log rewound."""
    data_dir = tmp_path / "server"
    admin.enroll_node(data_dir, "laptop", "ws1")
    with ServerStore(data_dir) as store:
        store.observe_audit_head("laptop", 9, "a" * 64)
        assert store.observe_audit_head("laptop", 3, "b" * 64).status == "rewound"
    server = ServerProc(data_dir, args=["--heartbeat-interval", "1"]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=DEFAULT_EXECUTABLE, args=CHROMIUM_ARGS)
        try:
            context = await chromium.new_context(viewport={"width": 1280, "height": 860})
            pg = await context.new_page()
            pg.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            yield pg
            assert not errors, f"uncaught errors in the page: {errors}"
        finally:
            await chromium.close()


async def _stored_token(pg: Page) -> str | None:
    value = await pg.evaluate("sessionStorage.getItem('cortex.token')")
    return None if value is None else str(value)


async def test_token_link_asks_before_replacing_another_identity(server_proc: ServerProc, page: Page) -> None:
    pg = page
    alice = server_proc.token("alice", "ws1")
    await pg.goto(f"{server_proc.url}/#token={alice}")
    await expect(pg.get_by_text("alice · ws1")).to_be_visible()

    # A fresh token of the same identity is simply taken (no question).
    alice_again = server_proc.token("alice", "ws1", ttl=1800)
    await pg.goto(f"{server_proc.url}/#token={alice_again}")
    await expect(pg.get_by_text("alice · ws1")).to_be_visible()
    assert await pg.locator("dialog[open]").count() == 0
    assert await _stored_token(pg) == alice_again

    # Another identity: asked; "stay" keeps everything as it was, and the link is gone from the bar.
    mallory = server_proc.token("mallory", "ws2", "admin")
    await pg.goto(f"{server_proc.url}/#token={mallory}")
    dialog = pg.get_by_role("dialog", name="Switch identity?")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("alice · ws1")
    await expect(dialog).to_contain_text("mallory · ws2 · admin")
    assert mallory not in pg.url
    assert await _stored_token(pg) == alice_again  # not stored before the answer
    await dialog.get_by_role("button", name="Stay alice").click()
    await expect(dialog).to_be_hidden()
    await expect(pg.get_by_text("alice · ws1")).to_be_visible()
    assert await _stored_token(pg) == alice_again

    # Escape is "stay" too.
    await pg.goto(f"{server_proc.url}/#token={mallory}")
    await expect(dialog).to_be_visible()
    await pg.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    assert await _stored_token(pg) == alice_again

    # A new page load with the link (sessionStorage survives it in this tab) asks as well; switch.
    await pg.goto(f"{server_proc.url}/?again=1#token={mallory}")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Switch to mallory").click()
    await expect(pg.get_by_text("mallory · ws2 · admin")).to_be_visible()
    assert await _stored_token(pg) == mallory
    assert mallory not in pg.url


async def test_rewound_audit_badge_and_acknowledge(rewound_server: ServerProc, page: Page) -> None:
    pg = page
    member = rewound_server.token("mia", "ws1", "member")
    await pg.goto(f"{rewound_server.url}/#token={member}")
    row = pg.locator('tr[data-node="laptop"]')
    await expect(row.locator('[data-audit="rewound"]')).to_have_text("⚠ audit rewound")
    await pg.get_by_role("link", name="laptop").click()
    head = pg.locator(".view-head")
    await expect(head.locator('[data-audit="rewound"]')).to_be_visible()
    assert await head.get_by_role("button", name="Acknowledge").count() == 0  # members cannot

    await pg.get_by_role("button", name="Sign out").click()
    await pg.goto(f"{rewound_server.url}/#token={rewound_server.admin_token}")
    await pg.get_by_role("link", name="laptop").click()
    await expect(head.locator('[data-audit="rewound"]')).to_be_visible()
    await head.get_by_role("button", name="Acknowledge").click()
    await expect(head.locator('[data-audit="rewound"]')).to_have_count(0)
    assert rewound_server.node("laptop")["audit"]["status"] == "ok"
