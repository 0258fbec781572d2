"""Tier (c): the dashboard's first-hour states in a real Chromium against a real server and real nodes.

Each state a newcomer meets (issue 19): a refused token said plainly, the favicon, who-am-I with the
token's expiry, node search, the "Add a node" panel, an unknown node, a node that went away while its
tools page is open, a failed validation clearing the old result, output shown once, full audit times,
callers on one line, expandable arguments and an audit view that updates by itself. Screenshots go to
``$TMPDIR/cortex-dashboard-shots/`` like test_dashboard's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx2
from playwright.async_api import Page, expect

from sdk import Client
from tests.support.procs import AgentProc, ServerProc
from tests.test_dashboard import PageErrors, _sign_in_by_link, browser, page, shots

__all__ = ["browser", "page", "shots"]  # fixtures shared with test_dashboard


def test_favicon_is_served(server_proc: ServerProc) -> None:
    response = httpx2.get(server_proc.url + "/favicon.ico", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
    index = httpx2.get(server_proc.url + "/", timeout=10).text
    assert 'rel="icon"' in index


async def test_a_refused_link_token_says_so(
    server_proc: ServerProc, page: tuple[Page, PageErrors], shots: Path, tmp_path: Path
) -> None:
    pg, _ = page
    foreign = ServerProc(tmp_path / "other").token("mallory", "ws1")  # signed by another server's key
    await pg.goto(f"{server_proc.url}/#token={foreign}")
    alert = pg.get_by_role("alert")
    await expect(alert).to_contain_text("The server refused the token for mallory")
    await expect(alert).to_contain_text("cortex-server issue-token")
    assert "session ended" not in (await alert.inner_text())
    await pg.screenshot(path=shots / "20-link-token-refused.png")


async def test_nodes_search_whoami_and_add_a_node(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], page: tuple[Page, PageErrors], shots: Path
) -> None:
    pg, _ = page
    start_node("alpha")
    start_node("beta")
    await _sign_in_by_link(pg, server_proc, server_proc.token("alice", "ws1", ttl=10800))
    await expect(pg.locator("#who")).to_contain_text("alice · ws1")
    await expect(pg.locator("#who")).to_contain_text("token expires in 3.0 h")
    await expect(pg.locator('tr[data-node="beta"]')).to_be_visible()

    search = pg.get_by_role("searchbox", name="Search nodes")
    await search.fill("alp")
    await expect(pg.locator('tr[data-node="alpha"]')).to_be_visible()
    await expect(pg.locator('tr[data-node="beta"]')).to_have_count(0)
    await search.fill("zzz")
    await expect(pg.get_by_test_id("no-match")).to_be_visible()
    await search.fill("")
    await pg.get_by_label("Filter by status").select_option("disconnected")
    await expect(pg.get_by_test_id("no-match")).to_be_visible()
    await pg.get_by_label("Filter by status").select_option("")

    await pg.get_by_text("Add a node").click()
    await pg.get_by_label("Node name").fill("desk-2")
    panel = pg.locator("#add-node")
    await expect(panel).to_contain_text("cortex-server enroll-node desk-2 --workspace ws1")
    await expect(panel).to_contain_text(f"cortex-agent login --server {server_proc.url} --name desk-2")
    await expect(panel).to_contain_text("cortex-agent run")
    await pg.screenshot(path=shots / "21-nodes-search-add-node.png", full_page=True)


async def test_unknown_and_vanished_nodes(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], page: tuple[Page, PageErrors], shots: Path
) -> None:
    pg, _ = page
    agent = start_node("laptop")
    await _sign_in_by_link(pg, server_proc, server_proc.token("alice", "ws1"))
    await pg.goto(f"{server_proc.url}/#/nodes/ghost")
    await expect(pg.locator('[data-status="unknown"]')).to_have_text("● Unknown node")
    await expect(pg.get_by_test_id("unknown-node")).to_contain_text("No node named ghost")
    await pg.screenshot(path=shots / "22-unknown-node.png")

    await pg.goto(f"{server_proc.url}/#/nodes/laptop")
    run = pg.get_by_role("button", name="Run", exact=True)
    await expect(run).to_be_enabled()
    agent.stop()
    await expect(run).to_be_disabled()
    await expect(pg.get_by_test_id("node-offline")).to_contain_text("laptop is disconnected")
    await pg.screenshot(path=shots / "23-node-went-away.png")


async def test_results_validation_and_output_once(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], page: tuple[Page, PageErrors], shots: Path
) -> None:
    pg, _ = page
    start_node("laptop")
    await _sign_in_by_link(pg, server_proc, server_proc.token("alice", "ws1"))
    await pg.goto(f"{server_proc.url}/#/nodes/laptop")
    await pg.get_by_role("button", name="Run a shell command").click()
    await pg.get_by_role("textbox", name="command (required)").fill("echo only-once-marker")
    await pg.get_by_role("button", name="Run", exact=True).click()
    await expect(pg.get_by_test_id("result")).to_contain_text("only-once-marker")
    await expect(pg.get_by_label("Progress output")).to_be_hidden()
    assert await pg.get_by_text("only-once-marker").and_(pg.locator(":visible")).count() <= 1

    await pg.get_by_role("textbox", name="command (required)").fill("")
    await pg.get_by_role("button", name="Run", exact=True).click()
    await expect(pg.get_by_text("command is required")).to_be_visible()
    await expect(pg.get_by_test_id("result")).to_have_count(0)  # the old result is gone
    await expect(pg.get_by_role("status").filter(has_text="Fix the highlighted argument")).to_be_visible()
    await pg.screenshot(path=shots / "24-validation-clears-result.png", full_page=True)


async def test_audit_times_callers_arguments_and_live_updates(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], page: tuple[Page, PageErrors], shots: Path
) -> None:
    pg, _ = page
    start_node("laptop")
    token = server_proc.token("alice/planner-run-0123456789", "ws1")
    long_text = "x" * 30 + "-the-end-of-a-long-argument-" + "y" * 40
    with Client(server_proc.url, token=token) as client:
        client.call("laptop", "echo", {"text": long_text})
    await _sign_in_by_link(pg, server_proc, token)
    await pg.goto(f"{server_proc.url}/#/nodes/laptop/audit")
    await expect(pg.get_by_test_id("chain")).to_contain_text("Chain verified")
    first = pg.locator("table.audit tbody tr").first
    await expect(first.locator('[data-label="Time"]')).to_contain_text("UTC")  # date, time and zone
    time_text = await first.locator('[data-label="Time"]').inner_text()
    assert any(str(year) in time_text for year in range(2025, 2100)), time_text  # the date, with its year
    caller = pg.locator(".caller").first
    assert await caller.evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"
    box = await caller.bounding_box()
    assert box is not None and box["height"] < 30, box  # one line
    wrap = pg.locator("table.audit").locator("xpath=..")
    fits = "e => e.scrollWidth <= e.clientWidth + 1"
    assert await wrap.evaluate(fits), "the audit table needs a horizontal scroll at 1280 px"
    details = pg.locator("details.args-details").first
    await expect(details.locator("pre")).to_be_hidden()
    await details.locator("summary").click()
    await expect(details.locator("pre")).to_contain_text("-the-end-of-a-long-argument-")
    assert await wrap.evaluate(fits), "expanded arguments widen the table past the page"
    await pg.screenshot(path=shots / "25-audit-full.png", full_page=True)

    # The view updates by itself: a call made elsewhere shows up without Refresh.
    with Client(server_proc.url, token=token) as client:
        client.call("laptop", "echo", {"text": "arrived-live"})
    await expect(pg.locator("table.audit").get_by_text("arrived-live").first).to_be_attached()
    await expect(pg.get_by_test_id("audit-live")).to_contain_text("checked")
    await pg.screenshot(path=shots / "26-audit-live.png", full_page=True)
