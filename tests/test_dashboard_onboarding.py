"""Tier (c): the dashboard's first-hour states in a real Chromium against a real server and real nodes.

Each state a newcomer meets (issue 19): a refused token said plainly, the favicon, who-am-I with the
token's expiry, node search, the "Add a node" panel, an unknown node, a node that went away while its
tools page is open, a failed validation clearing the old result, output shown once, full audit times,
callers on one line, expandable arguments and an audit view that updates by itself. Screenshots go to
``$TMPDIR/cortex-dashboard-shots/`` like test_dashboard's.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx2
from playwright.async_api import Page, expect

from sdk import Client
from server.recent_calls import RecentCalls
from server.router import Caller
from tests.support.procs import REPO, AgentProc, ServerProc, _env
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


# ---- running a fleet: recent calls, enroll and revoke ------------------------------------------------


async def test_recent_calls_across_the_workspace(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], page: tuple[Page, PageErrors], shots: Path
) -> None:
    pg, _ = page
    start_node("alpha")
    start_node("beta")
    start_node("elsewhere", workspace="ws2")
    token = server_proc.token("alice", "ws1")
    with Client(server_proc.url, token=token) as client:
        client.call("alpha", "echo", {"text": "from-alpha"})
        client.call("beta", "shell_exec", {"command": "echo beta-said-this; exit 3"})
    with Client(server_proc.url, token=server_proc.token("eve", "ws2")) as other:
        other.call("elsewhere", "echo", {"text": "not-for-alice"})
    await _sign_in_by_link(pg, server_proc, token)
    await pg.get_by_role("link", name="Recent calls").click()
    await expect(pg.get_by_role("heading", name="Recent calls")).to_be_visible()
    rows = pg.locator("table.calls tbody tr")
    await expect(rows).to_have_count(2)
    newest = rows.first
    await expect(newest.locator('[data-label="Node"]')).to_have_text("beta")
    await expect(newest.locator('[data-label="Outcome"]')).to_have_text("error")
    await newest.locator('[data-label="Result"] summary').click()
    await expect(newest.locator('[data-label="Result"] pre')).to_contain_text("beta-said-this")
    await expect(rows.nth(1).locator('[data-label="Outcome"]')).to_have_text("ok")
    await expect(rows.nth(1).get_by_role("link", name="audit")).to_have_attribute(
        "href", "#/nodes/alpha/audit"
    )
    assert await pg.get_by_text("not-for-alice").count() == 0
    with Client(server_proc.url, token=token) as client:  # a new call shows up by itself
        client.call("alpha", "echo", {"text": "third-call"})
    await expect(rows).to_have_count(3)
    await pg.screenshot(path=shots / "27-recent-calls.png", full_page=True)


async def test_admin_enrolls_and_revokes_from_the_dashboard(
    server_proc: ServerProc,
    start_node: Callable[..., AgentProc],
    page: tuple[Page, PageErrors],
    shots: Path,
    tmp_path: Path,
) -> None:
    pg, _ = page
    start_node("laptop")
    await _sign_in_by_link(pg, server_proc, server_proc.token("root", "ws1", "admin"))
    await pg.get_by_text("Add a node").click()
    await pg.get_by_label("Node name").fill("newbie")
    await pg.get_by_test_id("enroll-now").click()
    credential = (await pg.get_by_test_id("credential").inner_text()).strip()
    await expect(pg.locator(".credential-once")).to_contain_text("shown only now")
    await pg.screenshot(path=shots / "28-enrolled-credential-once.png", full_page=True)
    login = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "desktop_agent.cli", "login", "--server", server_proc.url, "--name", "newbie",
         "--home", str(tmp_path / "newbie-home")],
        input=credential + "\n", capture_output=True, text=True, env=_env(), cwd=REPO, timeout=60,
        check=False,
    )  # fmt: skip
    assert login.returncode == 0 and "credential checked" in login.stderr, login.stderr

    await pg.goto(f"{server_proc.url}/#/nodes/laptop")
    pg.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await pg.get_by_test_id("revoke").click()
    await expect(pg.get_by_role("heading", name="Nodes")).to_be_visible()
    with server_proc.http() as http:
        assert http.get("/api/v1/nodes/laptop").status_code == 404  # a revoked node is unknown

    # A member sees no revoke button and cannot enroll.
    member = server_proc.token("alice", "ws1")
    # Signed out first: a link for another identity would otherwise ask before switching (identity test).
    await pg.get_by_role("button", name="Sign out").click()
    await _sign_in_by_link(pg, server_proc, member)
    await pg.goto(f"{server_proc.url}/#/nodes/newbie")
    await expect(pg.get_by_role("heading", name="newbie")).to_be_visible()
    await expect(pg.get_by_test_id("revoke")).to_have_count(0)
    await pg.goto(f"{server_proc.url}/#/nodes")
    await pg.get_by_text("Add a node").click()
    await expect(pg.get_by_test_id("enroll-now")).to_have_count(0)


def test_fleet_endpoints_refuse_what_they_must(server_proc: ServerProc) -> None:
    member = server_proc.token("alice", "ws1")
    with server_proc.http(member) as http:
        assert http.post("/api/v1/nodes", json={"name": "x1"}).json()["error"] == "forbidden"
        assert http.delete("/api/v1/nodes/x1").status_code == 403
    with server_proc.http() as http:
        assert http.post("/api/v1/nodes", json={"name": "Bad Name"}).status_code == 400
        assert http.post("/api/v1/nodes", content=b"{not json").status_code == 400
        made = http.post("/api/v1/nodes", json={"name": "x1"})
        assert made.status_code == 201 and made.json()["workspace"] == "ws1"
        assert http.post("/api/v1/nodes", json={"name": "x1"}).status_code == 409
        assert http.delete("/api/v1/nodes/ghost").status_code == 404
        assert http.delete("/api/v1/nodes/x1").json() == {"name": "x1", "revoked": True}
        assert http.get("/api/v1/calls?limit=nope").status_code == 400


def test_recent_calls_are_bounded() -> None:
    recent = RecentCalls(capacity=3, result_bytes=10)
    caller = Caller("alice", "ws1")
    for i in range(5):
        recent.record(
            started_at=float(i), duration_s=0.001, node="n", workspace="ws1" if i % 2 == 0 else "ws2",
            tool="echo", caller=caller, outcome="ok", arguments={"text": "a" * 50},
            result={"content": [{"type": "text", "text": "b" * 50}]},
        )  # fmt: skip
    assert len(recent) == 3
    seen = recent.visible(caller, 10)
    assert [c.started_at for c in seen] == [4.0, 2.0]  # newest first, own workspace only
    assert seen[0].result is not None and len(seen[0].result) == 10
    assert "_truncated" in seen[0].arguments
    assert [c.started_at for c in recent.visible(Caller("root", "x", "admin"), 10)] == [4.0, 3.0, 2.0]
    recent.record(
        started_at=9.0, duration_s=0.0, node="n", workspace="ws1", tool="echo", caller=caller, outcome="ok",
        arguments={"k" * 5000: 1}, result=None,
    )  # fmt: skip
    assert "_truncated" in recent.visible(caller, 1)[0].arguments  # a huge key is bounded too
