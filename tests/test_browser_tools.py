"""The browser tools against a real Debian Chromium and pages served from this test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import html
import io
import os
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from desktop_agent.tools.base import ToolContext, ToolFailure, ToolResult
from desktop_agent.tools.browser import BrowserTimeouts, BrowserTools
from spec.manifest import load_manifest

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium")

TIMEOUTS = BrowserTimeouts(navigation_s=2.0, action_s=1.0)

PAGES: dict[str, str] = {
    "/form": (
        "<title>Form</title><form action='/echo'>"
        "<input name='q' aria-label='Query'><button type='submit'>Send</button></form>"
    ),
    "/button": ("<title>Button</title><button onclick=\"this.textContent='Clicked!'\">Press me</button>"),
    "/long": "<title>Long</title><div style='height:4000px;background:linear-gradient(red,blue)'>top</div>",
    "/alert": "<title>Alert</title><script>alert('hello from alert')</script><p>after alert</p>",
    "/jserror": "<title>Broken</title><script>notDefinedAnywhere()</script><p>still here</p>",
}


@dataclass
class Site:
    """A small HTTP server in a thread; hold pages keep the response open until the test ends."""

    server: ThreadingHTTPServer
    release: threading.Event
    seen: dict[str, threading.Event] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def seen_event(self, path: str) -> threading.Event:
        return self.seen.setdefault(path, threading.Event())


@pytest.fixture
def site() -> Iterator[Site]:
    release = threading.Event()
    holder: dict[str, Site] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            holder["site"].seen_event(parts.path).set()
            if parts.path == "/nohead":  # accepts the request, never answers
                release.wait(30)
                return
            if parts.path == "/partial":  # headers and half a page, then nothing
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(
                    b"<html><head><title>Partial</title></head><body><p>partial</p>" + b" " * 4096
                )
                self.wfile.flush()
                release.wait(30)
                return
            if parts.path == "/echo":
                query = parse_qs(parts.query).get("q", [""])[0]
                body = f"<title>Echo</title><p>You said: {html.escape(query)}</p>"
            elif parts.path in PAGES:
                body = PAGES[parts.path]
            else:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["site"] = Site(server, release)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield holder["site"]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def make_policy(root: Path, **overrides: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "browser_enabled": True,
        "browser_executable": "/usr/bin/chromium",
        "browser_idle_timeout_s": 60.0,
        "browser_allowed_schemes": ("http", "https", "file"),
        "allowed_roots": (root,),
    }
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.fixture
def policy(root: Path) -> SimpleNamespace:
    return make_policy(root)


@pytest.fixture
async def browser(policy: SimpleNamespace) -> AsyncIterator[BrowserTools]:
    tools = BrowserTools(lambda: policy, timeouts=TIMEOUTS)
    try:
        yield tools
    finally:
        await tools.aclose()


@pytest.fixture
def ctx(tmp_path: Path, policy: SimpleNamespace) -> ToolContext:
    return ToolContext(request_id=1, caller={"sub": "tester", "ws": "ws1"}, home=tmp_path, policy=policy)


async def call(tools: BrowserTools, name: str, ctx: ToolContext, **arguments: Any) -> ToolResult:
    return await tools.tools()[name](arguments, ctx)


def text_of(result: ToolResult) -> str:
    return "\n".join(c["text"] for c in result.content if c["type"] == "text")


def image_of(result: ToolResult) -> tuple[Image.Image, str]:
    [image] = [c for c in result.content if c["type"] == "image"]
    decoded = Image.open(io.BytesIO(base64.b64decode(image["data"])))
    decoded.load()
    return decoded, image["mimeType"]


def ref_for(snapshot: str, role: str, name: str) -> str:
    match = re.search(rf'{role} "{re.escape(name)}"[^\n]*\[ref=(e[0-9]+)\]', snapshot)
    assert match, snapshot
    return match.group(1)


def chromium_main_pids() -> list[int]:
    """Chromium browser processes descended from this test process (found through /proc, no psutil)."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, list[bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            cmdlines[int(entry)] = cmdline.split(b"\0")
        except (OSError, IndexError, ValueError):
            continue

    def descends_from_us(pid: int) -> bool:
        for _ in range(10):
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
            if pid <= 1:
                return False
        return False

    return [
        pid
        for pid, cmd in cmdlines.items()
        if cmd
        and cmd[0].endswith(b"chromium")
        and not any(arg.startswith(b"--type=") for arg in cmd)
        and descends_from_us(pid)
    ]


async def wait_seen(site: Site, path: str) -> None:
    assert await asyncio.to_thread(site.seen_event(path).wait, 10), f"{path} never requested"


# -- the happy path --------------------------------------------------------------------------------------


async def test_starts_lazily_and_navigates(browser: BrowserTools, ctx: ToolContext, site: Site) -> None:
    assert browser.unavailable_reason() is None
    assert not browser.running
    result = await call(browser, "browser_navigate", ctx, url=f"{site.base}/button")
    assert browser.running
    assert not result.is_error
    assert result.structured is not None
    assert result.structured["title"] == "Button"
    assert result.structured["url"] == f"{site.base}/button"
    assert result.structured["status"] == 200
    assert result.structured["load_state"] == "load"


async def test_click_by_ref_changes_the_page(browser: BrowserTools, ctx: ToolContext, site: Site) -> None:
    await call(browser, "browser_navigate", ctx, url=f"{site.base}/button")
    before = text_of(await call(browser, "browser_snapshot", ctx))
    ref = ref_for(before, "button", "Press me")
    await call(browser, "browser_click", ctx, target=ref)
    after = text_of(await call(browser, "browser_snapshot", ctx))
    assert 'button "Clicked!"' in after
    assert "Press me" not in after


async def test_refs_stay_e_numbers_after_navigation(
    browser: BrowserTools, ctx: ToolContext, site: Site
) -> None:
    # Playwright prefixes refs with a frame number after a navigation (f2e3); the tools keep ^e[0-9]+$.
    await call(browser, "browser_navigate", ctx, url=f"{site.base}/form")
    await call(browser, "browser_navigate", ctx, url=f"{site.base}/button")
    snapshot = text_of(await call(browser, "browser_snapshot", ctx))
    refs = re.findall(r"\[ref=([^\]]+)\]", snapshot)
    assert refs and all(re.fullmatch(r"e[0-9]+", r) for r in refs), snapshot
    await call(browser, "browser_click", ctx, target=ref_for(snapshot, "button", "Press me"))
    assert "Clicked!" in text_of(await call(browser, "browser_snapshot", ctx))


async def test_type_and_submit_by_css_and_ref(browser: BrowserTools, ctx: ToolContext, site: Site) -> None:
    await call(browser, "browser_navigate", ctx, url=f"{site.base}/form")
    result = await call(
        browser, "browser_type", ctx, target="input[name=q]", text="hello cortex", submit=True
    )
    assert result.structured is not None and result.structured["title"] == "Echo"
    assert "You said: hello cortex" in text_of(await call(browser, "browser_snapshot", ctx))

    await call(browser, "browser_navigate", ctx, url=f"{site.base}/form")
    ref = ref_for(text_of(await call(browser, "browser_snapshot", ctx)), "textbox", "Query")
    await call(browser, "browser_type", ctx, target=ref, text="by ref", submit=True)
    assert "You said: by ref" in text_of(await call(browser, "browser_snapshot", ctx))


async def test_screenshots(browser: BrowserTools, ctx: ToolContext, site: Site) -> None:
    await call(browser, "browser_navigate", ctx, url=f"{site.base}/long")

    image, mime = image_of(await call(browser, "browser_screenshot", ctx))
    assert (mime, image.format, image.size) == ("image/png", "PNG", (1280, 800))

    image, _ = image_of(await call(browser, "browser_screenshot", ctx, full_page=True))
    assert image.width == 1280 and image.height >= 4000

    image, _ = image_of(await call(browser, "browser_screenshot", ctx, max_width=640))
    assert image.size == (640, 400)

    image, mime = image_of(await call(browser, "browser_screenshot", ctx, format="jpeg", quality=50))
    assert (mime, image.format, image.size) == ("image/jpeg", "JPEG", (1280, 800))

    with pytest.raises(ToolFailure):
        await call(browser, "browser_screenshot", ctx, format="gif")


async def test_calls_are_serialised_not_lost(browser: BrowserTools, ctx: ToolContext, site: Site) -> None:
    await call(browser, "browser_navigate", ctx, url=f"{site.base}/button")
    results = await asyncio.gather(*(call(browser, "browser_snapshot", ctx) for _ in range(4)))
    assert all("Press me" in text_of(r) for r in results)


# -- failures that must be clear and bounded ---------------------------------------------------------------


async def test_unreachable_url_fails_quickly(browser: BrowserTools, ctx: ToolContext) -> None:
    with socket.socket() as s:  # bound, never listening: refused, and no one else can take the port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ToolFailure):
            await call(browser, "browser_navigate", ctx, url=f"http://127.0.0.1:{port}/")
    assert time.monotonic() - started < TIMEOUTS.navigation_s + 5


async def test_target_matching_nothing_fails_within_the_timeout(
    browser: BrowserTools, ctx: ToolContext, site: Site
) -> None:
    await call(browser, "browser_navigate", ctx, url=f"{site.base}/button")
    for target in ("#no-such-thing", "e999"):
        started = time.monotonic()
        with pytest.raises(ToolFailure):
            await call(browser, "browser_click", ctx, target=target)
        assert time.monotonic() - started < TIMEOUTS.action_s + 3
    await call(browser, "browser_snapshot", ctx)  # refs from the latest snapshot now
    with pytest.raises(ToolFailure):
        await call(browser, "browser_type", ctx, target="e999", text="x")


async def test_never_loading_pages_are_bounded(browser: BrowserTools, ctx: ToolContext, site: Site) -> None:
    started = time.monotonic()
    result = await call(browser, "browser_navigate", ctx, url=f"{site.base}/partial")
    assert time.monotonic() - started < TIMEOUTS.navigation_s + 3
    assert not result.is_error
    assert result.structured is not None and result.structured["load_state"] != "load"
    assert "partial" in text_of(await call(browser, "browser_snapshot", ctx))

    started = time.monotonic()
    with pytest.raises(ToolFailure):
        await call(browser, "browser_navigate", ctx, url=f"{site.base}/nohead")
    assert time.monotonic() - started < TIMEOUTS.navigation_s + 3
    # The session is still usable afterwards.
    result = await call(browser, "browser_navigate", ctx, url=f"{site.base}/button")
    assert result.structured is not None and result.structured["title"] == "Button"


async def test_dialog_is_dismissed_and_reported(browser: BrowserTools, ctx: ToolContext, site: Site) -> None:
    result = await call(browser, "browser_navigate", ctx, url=f"{site.base}/alert")
    assert "hello from alert" in text_of(result)
    assert result.structured is not None and result.structured["load_state"] == "load"
    assert "after alert" in text_of(await call(browser, "browser_snapshot", ctx))


async def test_javascript_error_is_reported(browser: BrowserTools, ctx: ToolContext, site: Site) -> None:
    result = await call(browser, "browser_navigate", ctx, url=f"{site.base}/jserror")
    assert not result.is_error
    assert "notDefinedAnywhere" in text_of(result)
    follow_up = await call(browser, "browser_snapshot", ctx)
    assert "still here" in text_of(follow_up)
    assert "notDefinedAnywhere" not in text_of(follow_up)  # reported once


async def test_crash_fails_the_call_and_the_next_call_recovers(
    browser: BrowserTools, ctx: ToolContext, site: Site
) -> None:
    await call(browser, "browser_navigate", ctx, url=f"{site.base}/button")
    pids = chromium_main_pids()
    assert len(pids) == 1
    pending = asyncio.create_task(call(browser, "browser_navigate", ctx, url=f"{site.base}/nohead"))
    await wait_seen(site, "/nohead")
    os.kill(pids[0], signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(ToolFailure):
        async with asyncio.timeout(10):
            await pending
    assert time.monotonic() - started < TIMEOUTS.navigation_s + 3
    result = await call(browser, "browser_navigate", ctx, url=f"{site.base}/button")
    assert result.structured is not None and result.structured["title"] == "Button"
    assert chromium_main_pids() not in ([], pids)


async def test_cancelled_call_leaves_the_session_usable(
    browser: BrowserTools, ctx: ToolContext, site: Site
) -> None:
    await call(browser, "browser_navigate", ctx, url=f"{site.base}/form")
    pending = asyncio.create_task(call(browser, "browser_navigate", ctx, url=f"{site.base}/nohead"))
    await wait_seen(site, "/nohead")
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    async with asyncio.timeout(TIMEOUTS.navigation_s + 3):
        result = await call(browser, "browser_navigate", ctx, url=f"{site.base}/button")
        assert result.structured is not None and result.structured["title"] == "Button"
        await call(browser, "browser_click", ctx, target="button")
        assert "Clicked!" in text_of(await call(browser, "browser_snapshot", ctx))


async def test_idle_browser_closes_and_restarts(ctx: ToolContext, site: Site, root: Path) -> None:
    policy = make_policy(root, browser_idle_timeout_s=0.3)
    tools = BrowserTools(lambda: policy, timeouts=TIMEOUTS)
    try:
        await call(tools, "browser_navigate", ctx, url=f"{site.base}/button")
        assert tools.running
        # The idle period is the feature here: poll for its effect, with a bound.
        async with asyncio.timeout(5):
            while tools.running:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert chromium_main_pids() == []
        result = await call(tools, "browser_navigate", ctx, url=f"{site.base}/button")
        assert result.structured is not None and result.structured["title"] == "Button"
    finally:
        await tools.aclose()
    assert not tools.running


# -- policy ---------------------------------------------------------------------------------------------


async def test_schemes_and_roots(browser: BrowserTools, ctx: ToolContext, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.html"
    outside.write_text("<title>Secret</title><p>the secret</p>")
    (root / "link.html").symlink_to(outside)
    (root / "inside.html").write_text(
        f"<title>Inside</title><p>inside page</p><iframe src='{outside.as_uri()}'></iframe>"
    )
    for url in (
        "ftp://127.0.0.1/file",
        "javascript:alert(1)",
        "data:text/html,<p>x</p>",
        "chrome://version",
        outside.as_uri(),
        (root / "link.html").as_uri(),
        (root / ".." / "outside.html").as_uri(),
        "127.0.0.1:8080/no-scheme",
    ):
        with pytest.raises(ToolFailure):
            await call(browser, "browser_navigate", ctx, url=url)
    assert not browser.running  # refused before any browser started

    result = await call(browser, "browser_navigate", ctx, url=(root / "inside.html").as_uri())
    assert result.structured is not None and result.structured["title"] == "Inside"
    snapshot = text_of(await call(browser, "browser_snapshot", ctx))
    assert "inside page" in snapshot
    assert "the secret" not in snapshot  # the frame from outside the roots was blocked


async def test_unavailable_reasons(ctx: ToolContext, root: Path, tmp_path: Path) -> None:
    bogus = BrowserTools(lambda: make_policy(root, browser_executable=str(tmp_path / "no-chromium")))
    assert bogus.unavailable_reason() is not None
    with pytest.raises(ToolFailure):
        await call(bogus, "browser_navigate", ctx, url="http://127.0.0.1/")
    assert set(bogus.tools()) == {t["name"] for t in load_manifest() if t["name"].startswith("browser_")}
    await bogus.aclose()

    disabled = BrowserTools(lambda: make_policy(root, browser_enabled=False))
    assert disabled.unavailable_reason() is not None
    with pytest.raises(ToolFailure):
        await call(disabled, "browser_snapshot", ctx)
    await disabled.aclose()

    # Present but not a browser: the launch fails with a clear failure, not a hang or a crash.
    fake = tmp_path / "fake-chromium"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    broken = BrowserTools(lambda: make_policy(root, browser_executable=str(fake)), timeouts=TIMEOUTS)
    assert broken.unavailable_reason() is None
    with pytest.raises(ToolFailure):
        await call(broken, "browser_snapshot", ctx)
    assert not broken.running
    await broken.aclose()
