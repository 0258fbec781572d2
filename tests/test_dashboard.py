"""Tier (c): the dashboard in a real Chromium (Playwright + Debian's /usr/bin/chromium) against a real
`cortex-server serve` process and real `cortex-agent run` nodes on loopback.

Screenshots are kept as artifacts under ``$TMPDIR/cortex-dashboard-shots/`` (the path is printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import struct
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from playwright.async_api import Browser, Page, async_playwright, expect
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from desktop_agent.audit import record_hash
from desktop_agent.tools.browser import CHROMIUM_ARGS, DEFAULT_EXECUTABLE
from tests.support.fake_llm import FakeLLM, Turn
from tests.support.procs import AgentProc, ServerProc

CHROMIUM = DEFAULT_EXECUTABLE
WAIT_MS = 20_000

expect.set_options(timeout=WAIT_MS)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shots() -> Path:
    path = Path(tempfile.gettempdir()) / "cortex-dashboard-shots"
    path.mkdir(exist_ok=True)
    print(f"\ndashboard screenshots: {path}")
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


class PageErrors(list[str]):
    """Uncaught exceptions in the page: any of them fails the test."""


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[tuple[Page, PageErrors]]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    pg = await context.new_page()
    pg.set_default_timeout(WAIT_MS)
    errors = PageErrors()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg, errors
    finally:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _png(width: int = 160, height: int = 90) -> bytes:
    """A small real PNG (a red/blue split) for image rendering."""
    rows = b"".join(
        b"\x00" + b"".join(b"\xd0\x20\x20" if x < width // 2 else b"\x20\x40\xd0" for x in range(width))
        for _ in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _wait_process_gone(pid: int, timeout: float) -> bool:
    """Wait (on a pidfd, no polling) until process `pid` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def _offer(token_protocol: str) -> list[Subprotocol]:
    return [Subprotocol("cortex.v1"), Subprotocol(token_protocol)]


def _tamper(log: Path, needle: bytes, replacement: bytes) -> int:
    """Overwrite `needle` in the first record holding it, in place (hash left stale); returns its seq."""
    data = log.read_bytes()
    at = data.index(needle)
    line_start = data.rfind(b"\n", 0, at) + 1
    seq = int(json.loads(data[line_start : data.index(b"\n", at)])["seq"])
    with open(log, "r+b") as f:
        f.seek(at)
        f.write(replacement)
    return seq


async def _sign_in_by_link(pg: Page, server: ServerProc, token: str, path: str = "#/nodes") -> None:
    await pg.goto(f"{server.url}/#token={token}")
    await expect(pg.get_by_role("button", name="Sign out")).to_be_visible()
    assert token not in pg.url, "the token must leave the address bar"
    if path != "#/nodes":
        await pg.goto(f"{server.url}/{path}")


async def _refresh_until(pg: Page, selector: str, attempts: int = 20) -> None:
    """Click the audit view's Refresh until `selector` shows (bounded: attempts x 1 s)."""
    for _ in range(attempts):
        try:
            await pg.locator(selector).first.wait_for(timeout=1000)
            return
        except Exception:
            await pg.get_by_role("button", name="Refresh").click()
    await pg.locator(selector).first.wait_for(timeout=1000)


# ---- the page and the subprotocol token ----------------------------------------------------------


def test_page_and_assets_served(server_proc: ServerProc) -> None:
    with server_proc.http("no-token-needed") as http:
        page = http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script type="module" src="/static/app.js">' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset, kind in [("app.js", "javascript"), ("api.js", "javascript"), ("app.css", "css")]:
            response = http.get(f"/static/{asset}")
            assert response.status_code == 200 and kind in response.headers["content-type"], asset
        assert http.get("/static/nope.js").status_code == 404


async def test_rpc_accepts_token_as_subprotocol(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    token = server_proc.token()
    url = server_proc.url.replace("http", "ws") + "/api/v1/rpc"
    async with connect(url, subprotocols=_offer(f"bearer.{token}"), compression=None) as ws:
        assert ws.subprotocol == "cortex.v1"
        await ws.send(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"node": "laptop", "name": "echo", "arguments": {"text": "via sp"}},
                }
            )
        )
        async with asyncio.timeout(10):
            reply = json.loads(await ws.recv())
        assert reply["result"]["content"][0]["text"] == "via sp"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(url, subprotocols=_offer("bearer.garbage")):
            pass
    assert refused.value.response.status_code == 401
    # The tunnel does not take a token this way (nodes can send headers).
    tunnel = server_proc.url.replace("http", "ws") + "/api/v1/nodes/connect"
    with pytest.raises(websockets.InvalidStatus) as tunnel_refused:
        async with connect(tunnel, subprotocols=_offer(f"bearer.{token}")):
            pass
    assert tunnel_refused.value.response.status_code == 401
    assert token not in "".join(server_proc.output), "the token must never be logged"


async def test_canonical_json_matches_python(server_proc: ServerProc, page: tuple[Page, PageErrors]) -> None:
    """The browser's hash of a record equals desktop_agent.audit.record_hash for awkward values."""
    pg, _ = page
    records: list[dict[str, Any]] = [
        {"seq": 1, "prev": "0" * 64, "ts": "2025-01-01T00:00:00Z", "arguments": {"text": "héllo ✓ 𝄞 \u2028"}},
        {"seq": 2, "arguments": {"timeout_s": 5.0, "tiny": 1e-07, "x": 0.1, "big": 2**70, "neg": -3}},
        {"seq": 3, "arguments": {"ctl": '\x01\t\n\r\b\f"\\/\x7f', "nested": [[], {}, None, True, False]}},
        {"seq": 4, "arguments": {"\ue000": 1, "\U0001d11e": 2, "Z": 3, "a": 4, "é": 5}},
        {"seq": 5, "exit_code": None, "caller": {"sub": "alice/planner:1", "ws": "ws1"}, "status": "ok"},
    ]
    for r in records:
        r["hash"] = record_hash(r)
    await pg.goto(server_proc.url + "/")
    for ensure_ascii in (True, False):
        text = json.dumps({"records": records}, ensure_ascii=ensure_ascii)
        got = await pg.evaluate(
            """async (text) => {
                const m = await import('/static/audit.js');
                const parsed = m.parseLossless(text).records;
                const hashes = [];
                for (const r of parsed) hashes.push(await m.recordHash(r));
                return hashes;
            }""",
            text,
        )
        assert got == [r["hash"] for r in records]


# ---- sign-in and the live nodes view -------------------------------------------------------------


async def test_sign_in_live_nodes_and_sign_out(
    server_proc: ServerProc,
    start_node: Callable[..., AgentProc],
    page: tuple[Page, PageErrors],
    shots: Path,
) -> None:
    pg, _ = page
    await pg.goto(server_proc.url + "/")
    token_box = pg.get_by_label("User access token")
    await expect(token_box).to_be_focused()
    await token_box.fill("not-a-token")
    await pg.keyboard.press("Tab")
    await pg.keyboard.press("Enter")  # keyboard only: Tab to "Sign in", Enter
    await expect(pg.get_by_role("alert")).to_contain_text("refused")
    await pg.screenshot(path=shots / "01-sign-in-refused.png")

    await token_box.fill(server_proc.token("alice", "ws1"))
    await pg.get_by_role("button", name="Sign in").click()
    await expect(pg.get_by_role("heading", name="Nodes")).to_be_visible()
    await expect(pg.get_by_text("alice · ws1")).to_be_visible()
    await expect(pg.locator("#live")).to_have_text("Live")
    await expect(pg.get_by_text("No nodes yet")).to_be_visible()

    agent = start_node("laptop")
    row = pg.locator('tr[data-node="laptop"]')
    await expect(row).to_have_attribute("data-status", "connected")
    await expect(row.locator('[data-label="OS"]')).to_contain_text("Linux")
    await expect(row.locator('[data-label="Agent"]')).not_to_have_text("—")
    await expect(row.locator('[data-label="Tools"]')).not_to_have_text("0")
    await expect(row.locator('[data-label="Round trip"]')).to_contain_text("ms")  # heartbeat is 1 s here
    await pg.screenshot(path=shots / "02-nodes-connected.png")

    start_node("other-team", workspace="ws2")  # another workspace: never shown to alice
    agent.stop()
    await expect(row).to_have_attribute("data-status", "disconnected")
    await expect(row.get_by_text("Disconnected")).to_be_visible()
    assert await pg.locator('tr[data-node="other-team"]').count() == 0
    await pg.screenshot(path=shots / "03-nodes-disconnected.png")

    await pg.set_viewport_size({"width": 400, "height": 800})
    await pg.screenshot(path=shots / "04-nodes-narrow.png", full_page=True)

    await pg.get_by_role("button", name="Sign out").click()
    await expect(pg.get_by_label("User access token")).to_be_visible()
    assert await pg.evaluate("sessionStorage.getItem('cortex.token')") is None

    # The demo link signs in and the token leaves the address bar at once.
    await _sign_in_by_link(pg, server_proc, server_proc.token("bob", "ws1"))
    assert pg.url.endswith("#/nodes")
    await expect(pg.get_by_text("bob · ws1")).to_be_visible()
    await pg.reload()  # the session survives a reload of the tab
    await expect(pg.get_by_text("bob · ws1")).to_be_visible()


# ---- tools, progress, cancel, audit --------------------------------------------------------------


async def test_run_tools_cancel_and_audit(
    server_proc: ServerProc,
    start_node: Callable[..., AgentProc],
    page: tuple[Page, PageErrors],
    shots: Path,
    tmp_path: Path,
) -> None:
    pg, _ = page
    agent = start_node("laptop")
    (tmp_path / "laptop-root" / "dot.png").write_bytes(_png())
    await _sign_in_by_link(pg, server_proc, server_proc.token("alice", "ws1"))
    await pg.get_by_role("link", name="laptop").click()
    await expect(pg.get_by_role("heading", name="laptop", exact=True)).to_be_visible()

    # echo: the required field is enforced, then the result comes back.
    await pg.get_by_role("button", name="Echo").click()
    await pg.get_by_role("button", name="Run", exact=True).click()
    await expect(pg.locator(".field-error")).to_have_text("text is required")
    text_box = pg.get_by_role("textbox", name="text (required)")
    await expect(text_box).to_be_focused()
    await text_box.fill("hello dashboard")
    await pg.get_by_role("button", name="Run", exact=True).click()
    await expect(pg.get_by_test_id("result")).to_contain_text("hello dashboard")
    await pg.screenshot(path=shots / "05-echo-result.png")

    # shell_exec: output streams as progress, the structured result is shown.
    await pg.get_by_role("button", name="Run a shell command").click()
    await pg.get_by_role("textbox", name="command (required)").fill("echo first; echo second; echo oops >&2")
    await pg.get_by_role("button", name="Run", exact=True).click()
    result = pg.get_by_test_id("result")
    await expect(result).to_contain_text('"exit_code": 0')
    await expect(result).to_contain_text("first\\nsecond")
    await expect(pg.get_by_role("status").filter(has_text="finished")).to_be_visible()
    await pg.screenshot(path=shots / "06-shell-result.png", full_page=True)

    # A failing command is an isError result, highlighted.
    await pg.get_by_role("textbox", name="command (required)").fill("echo bad news; exit 3")
    await pg.get_by_role("button", name="Run", exact=True).click()
    await expect(pg.locator(".result-error")).to_contain_text("The tool reported an error")
    await expect(pg.locator(".result-error")).to_contain_text('"exit_code": 3')
    await pg.screenshot(path=shots / "07-shell-error.png", full_page=True)

    # A long run: its output appears while it runs, Cancel kills it on the node.
    await pg.get_by_role("textbox", name="command (required)").fill("echo pid=$$; exec sleep 60")
    await pg.get_by_role("button", name="Run", exact=True).click()
    progress = pg.get_by_label("Progress output")
    await expect(progress).to_contain_text("pid=")
    pid = int((await progress.inner_text()).split("pid=")[1].split()[0])
    await expect(pg.get_by_role("status").filter(has_text="Running shell_exec")).to_be_visible()
    await pg.screenshot(path=shots / "08-shell-running.png", full_page=True)
    started = time.monotonic()
    await pg.get_by_role("button", name="Cancel").click()
    await expect(pg.get_by_role("status").filter(has_text="was cancelled")).to_be_visible()
    gone = await asyncio.to_thread(_wait_process_gone, pid, 10)
    assert gone, "the cancelled command is still running on the node"
    assert time.monotonic() - started < 10

    # An image from fs_read is shown inline.
    await pg.get_by_role("button", name="Read a file").click()
    await pg.get_by_role("textbox", name="path (required)").fill("dot.png")
    await pg.get_by_role("button", name="Run", exact=True).click()
    image = pg.get_by_test_id("result").get_by_role("img")
    await expect(image).to_be_visible()
    assert await image.evaluate("img => img.naturalWidth") == 160
    await pg.screenshot(path=shots / "09-image-result.png", full_page=True)

    # Enough records for two audit pages (25 a page).
    with server_proc.http(server_proc.token("alice", "ws1")) as http:
        for i in range(8):
            echoed = http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": f"n{i}"}})
            assert echoed.status_code == 200

    # The audit view: new records, newest first, the chain verified in the browser, filters, pages.
    await pg.get_by_role("link", name="Audit log").click()
    chain = pg.get_by_test_id("chain")
    await expect(chain).to_contain_text("Chain verified")
    await _refresh_until(pg, "tr .status-cancelled")
    await expect(chain).to_contain_text("Chain verified")
    seqs = [int(s) for s in await pg.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == 25
    await pg.screenshot(path=shots / "10-audit.png", full_page=True)
    await expect(pg.get_by_text("Page 1 of 2")).to_be_visible()
    await pg.get_by_role("button", name="Older").click()
    await expect(pg.get_by_text("Page 2 of 2")).to_be_visible()
    await expect(pg.locator('tr[data-seq="1"]')).to_contain_text("node.connected")
    await pg.get_by_role("button", name="Newer").click()
    await pg.get_by_label("Tool").select_option("shell_exec")
    await pg.get_by_label("Status").select_option("cancelled")
    rows = pg.locator("tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("exec sleep 60")
    await pg.get_by_label("Status").select_option("error")
    await expect(rows).to_have_count(1)
    await expect(rows.first.locator('[data-label="Exit"]')).to_have_text("3")
    await pg.get_by_label("Status").select_option("")
    await pg.get_by_label("Tool").select_option("")

    # Tamper with one record on the node's disk: the browser finds the break at that seq.
    victim_seq = _tamper(agent.home / "audit.log", b"hello dashboard", b"HELLO")
    await pg.get_by_role("button", name="Refresh").click()
    await expect(chain).to_contain_text(f"Chain broken at seq {victim_seq}")
    await pg.screenshot(path=shots / "11-audit-broken.png")

    # Narrow window: the tool view stacks.
    await pg.set_viewport_size({"width": 400, "height": 800})
    await pg.get_by_role("link", name="Tools").click()
    await expect(pg.get_by_role("button", name="Echo")).to_be_visible()
    await pg.screenshot(path=shots / "12-tools-narrow.png", full_page=True)

    # No LLM configured on this server: the assistant says so plainly.
    await pg.set_viewport_size({"width": 1280, "height": 860})
    await pg.get_by_role("link", name="Ask the assistant").click()
    await pg.get_by_role("textbox", name="Goal").fill("What is the OS?")
    await pg.get_by_role("button", name="Run", exact=True).click()
    await expect(pg.get_by_test_id("planner-unconfigured")).to_contain_text("CORTEX_LLM_PROVIDER")
    await pg.screenshot(path=shots / "13-assistant-unconfigured.png")


# ---- the assistant with a scripted LLM -----------------------------------------------------------


@pytest.fixture
def llm_server(tmp_path: Path) -> Iterator[tuple[ServerProc, FakeLLM, AgentProc, Path]]:
    script = [
        Turn(text="Let me look at the node.", calls=[("laptop__shell_exec", {"command": "uname -s"})]),
        Turn(calls=[("laptop__fs_read", {"path": "dot.png"})]),
        Turn(text="The node runs Linux, and dot.png is a red and blue picture."),
        Turn(calls=[("laptop__shell_exec", {"command": "exec sleep 60"})]),
        Turn(text="never reached"),
    ]
    with FakeLLM("openai", script) as llm:
        server = ServerProc(tmp_path / "server", args=["--heartbeat-interval", "1"], env=llm.env()).start()
        root = tmp_path / "root"
        root.mkdir()
        (root / "dot.png").write_bytes(_png())
        agent = AgentProc(
            tmp_path / "home",
            server.url,
            "laptop",
            server.enroll("laptop", "ws1"),
            ["--allow-root", str(root), "--no-browser"],
        )
        try:
            agent.start()
            server.wait_status("laptop", "connected", timeout=30)
            yield server, llm, agent, root
        finally:
            agent.stop()
            server.stop()


async def test_assistant_streams_steps_and_cancels(
    llm_server: tuple[ServerProc, FakeLLM, AgentProc, Path],
    page: tuple[Page, PageErrors],
    shots: Path,
) -> None:
    server, llm, _agent, _root = llm_server
    pg, _ = page
    await _sign_in_by_link(pg, server, server.token("alice", "ws1"), "#/assistant")
    await expect(pg.get_by_role("heading", name="Assistant")).to_be_visible()
    await pg.get_by_role("textbox", name="Goal").fill("Which OS does laptop run, and what is in dot.png?")
    await pg.get_by_label("Node").select_option("laptop")
    await pg.get_by_role("button", name="Run", exact=True).click()

    steps = pg.get_by_role("list", name="Planner steps")
    answer = steps.locator('[data-event="done"]')
    await expect(answer).to_contain_text("The node runs Linux")
    calls = steps.locator('[data-event="tool_call"]')
    await expect(calls).to_have_count(2)
    await expect(calls.nth(0)).to_contain_text("laptop · shell_exec")
    await expect(calls.nth(0)).to_contain_text("uname -s")
    results = steps.locator('[data-event="tool_result"]')
    await expect(results.nth(0)).to_contain_text("Linux")
    await expect(results.nth(1).get_by_role("img")).to_be_visible()  # the screenshot-like image inline
    await expect(steps.locator('[data-event="message"]')).to_have_count(1)  # the answer is not repeated
    await expect(steps.locator('[data-event="message"]')).to_contain_text("Let me look at the node.")
    await expect(pg.get_by_role("status").filter(has_text="The planner finished")).to_be_visible()
    await pg.screenshot(path=shots / "14-assistant-run.png", full_page=True)
    assert llm.requests, "the planner never asked the model"

    # A second run blocks in `sleep 60`: Cancel stops the run and the command on the node.
    await pg.get_by_role("textbox", name="Goal").fill("Wait a minute.")
    await pg.get_by_role("button", name="Run", exact=True).click()
    await expect(steps.locator('[data-event="tool_call"]')).to_contain_text("exec sleep 60")
    await pg.get_by_role("button", name="Cancel").click()
    await expect(pg.get_by_role("status").filter(has_text="Run cancelled")).to_be_visible()
    await pg.screenshot(path=shots / "15-assistant-cancelled.png", full_page=True)

    # The node's audit shows both planner runs' calls, the last one cancelled, named after the run.
    await pg.goto(f"{server.url}/#/nodes/laptop/audit")
    await _refresh_until(pg, "tr .status-cancelled")
    await expect(pg.get_by_test_id("chain")).to_contain_text("Chain verified")
    cancelled = pg.locator("tr", has=pg.locator(".status-cancelled")).first
    await expect(cancelled.locator('[data-label="Caller"]')).to_contain_text("alice/planner:")
    await pg.screenshot(path=shots / "16-audit-after-planner.png", full_page=True)


async def test_audit_head_went_backwards(
    server_proc: ServerProc,
    start_node: Callable[..., AgentProc],
    page: tuple[Page, PageErrors],
    shots: Path,
) -> None:
    """The node comes back with a shorter log (its tail deleted): the page shows the server's warning."""
    agent = start_node("laptop")
    with server_proc.http(server_proc.token("alice", "ws1")) as http:
        for i in range(3):
            http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": f"t{i}"}})
    # The server learns a node's audit head at each handshake: reconnect once so it sees the longer log.
    agent.stop()
    server_proc.wait_status("laptop", "disconnected")
    agent.start()
    server_proc.wait_status("laptop", "connected", timeout=30)
    agent.stop()
    server_proc.wait_status("laptop", "disconnected")
    log = agent.home / "audit.log"
    log.write_bytes(log.read_bytes().splitlines(keepends=True)[0])  # keep only record 1
    agent.start()
    server_proc.wait_status("laptop", "connected", timeout=30)
    pg, _ = page
    await _sign_in_by_link(pg, server_proc, server_proc.token("alice", "ws1"), "#/nodes/laptop/audit")
    chain = pg.get_by_test_id("chain")
    await expect(chain).to_contain_text("Head went backwards")
    await expect(chain).to_have_attribute("data-state", "warning")
    await expect(chain).to_contain_text("Chain verified")  # what is left still links up
    await pg.screenshot(path=shots / "17-audit-head-backwards.png")
