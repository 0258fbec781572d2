"""Browser tools beyond the first five, and the file:// guard, against a real Debian Chromium."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.tools.base import ToolContext, ToolFailure
from desktop_agent.tools.browser import BrowserTools
from tests.test_browser_tools import TIMEOUTS, call, make_policy, text_of

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium")

SECRET = "cortex-node-credential-5f2a9c"


class Node:
    """A root with the agent's home inside it (as with the default root, ~), and its credential."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.home = self.root / ".cortex"
        self.home.mkdir(parents=True)
        self.credentials = self.home / "credentials.json"
        self.credentials.write_text(f'{{"credential": "{SECRET}"}}')
        (self.home / "agent.toml").write_text(f"# {SECRET}-toml\n")
        self.protected = self.root / "server-data"
        self.protected.mkdir()
        (self.protected / "keys.txt").write_text(f"{SECRET}-server")

    def page(self, name: str, body: str) -> str:
        path = self.root / name
        path.write_text(body)
        return path.as_uri()


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


@pytest.fixture
async def browser(node: Node) -> AsyncIterator[tuple[BrowserTools, ToolContext]]:
    policy = make_policy(node.root, protected_paths=(node.protected,))
    tools = BrowserTools(lambda: policy, timeouts=TIMEOUTS, home=node.home)
    ctx = ToolContext(request_id=1, caller={"sub": "t", "ws": "w"}, home=node.home, policy=policy)
    try:
        yield tools, ctx
    finally:
        await tools.aclose()


async def run(b: tuple[BrowserTools, ToolContext], tool: str, **arguments: Any) -> str:
    return text_of(await call(b[0], tool, b[1], **arguments))


async def test_the_credential_never_reaches_the_page(
    browser: tuple[BrowserTools, ToolContext], node: Node
) -> None:
    hard_link = node.root / "innocent.txt"
    os.link(node.credentials, hard_link)
    nested = node.root / "sub"
    nested.mkdir()
    os.link(node.protected / "keys.txt", nested / "k.txt")
    sources = [
        node.credentials.as_uri(),
        hard_link.as_uri(),
        (node.home / "agent.toml").as_uri(),
        (node.protected / "keys.txt").as_uri(),
        (nested / "k.txt").as_uri(),
    ]
    frames = "".join(f"<iframe src='{s}'></iframe>" for s in sources)
    fetches = "".join(
        f"fetch('{s}').then(r => r.text()).then(t => {{ document.getElementById('out').textContent += t }})"
        ".catch(() => {});"
        for s in sources
    )
    url = node.page(
        "evil.html",
        f"<title>Evil</title><p>ordinary page</p>{frames}"
        f"<pre id='out'>fetched:</pre><script>{fetches}</script>",
    )
    await run(browser, "browser_navigate", url=url)
    await run(browser, "browser_wait_for", timeout_s=0.5)
    snapshot = await run(browser, "browser_snapshot")
    assert "ordinary page" in snapshot
    assert SECRET not in snapshot
    for source in (node.credentials, node.home / "agent.toml", node.protected / "keys.txt", hard_link):
        with pytest.raises(ToolFailure):
            await run(browser, "browser_navigate", url=source.as_uri())
    for source in (node.credentials, hard_link):
        with pytest.raises(ToolFailure):
            await run(browser, "browser_file_upload", target="input", paths=[str(source)])
    # An ordinary file under the root is still served, through the same guard.
    (node.root / "fine.txt").write_text("fine content")
    await run(browser, "browser_navigate", url=(node.root / "fine.txt").as_uri())
    assert "fine content" in await run(browser, "browser_snapshot")


async def test_a_symlinked_directory_does_not_lead_out(
    browser: tuple[BrowserTools, ToolContext], node: Node, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text("outside content")
    (node.root / "door").symlink_to(outside)
    url = node.page(
        "door.html", f"<p>door page</p><iframe src='{(node.root / 'door' / 'x.txt').as_uri()}'></iframe>"
    )
    await run(browser, "browser_navigate", url=url)
    snapshot = await run(browser, "browser_snapshot")
    assert "door page" in snapshot and "outside content" not in snapshot


async def test_tabs(browser: tuple[BrowserTools, ToolContext], node: Node) -> None:
    first = node.page("one.html", "<title>One</title><p>first</p>")
    second = node.page("two.html", "<title>Two</title><p>second</p>")
    await run(browser, "browser_navigate", url=first)
    tools, ctx = browser
    result = await call(tools, "browser_tabs", ctx, action="new", url=second)
    assert result.structured is not None
    tabs = result.structured["tabs"]
    assert [(t["index"], t["title"], t["active"]) for t in tabs] == [(0, "One", False), (1, "Two", True)]
    assert "second" in await run(browser, "browser_snapshot")
    result = await call(tools, "browser_tabs", ctx, action="select", index=0)
    assert result.structured is not None and result.structured["tabs"][0]["active"] is True
    assert "first" in await run(browser, "browser_snapshot")
    result = await call(tools, "browser_tabs", ctx, action="close", index=0)
    assert result.structured is not None
    assert [(t["title"], t["active"]) for t in result.structured["tabs"]] == [("Two", True)]
    with pytest.raises(ToolFailure):
        await call(tools, "browser_tabs", ctx, action="select", index=5)
    listed = await call(tools, "browser_tabs", ctx, action="list")
    assert listed.structured is not None and len(listed.structured["tabs"]) == 1


async def test_press_key_answers_with_the_new_snapshot(
    browser: tuple[BrowserTools, ToolContext], node: Node
) -> None:
    url = node.page(
        "keys.html",
        "<title>Keys</title><input aria-label='Box' autofocus>"
        "<p id='out'>none</p><script>document.addEventListener('keydown', e => {"
        "document.getElementById('out').textContent = 'pressed ' + e.key })</script>",
    )
    await run(browser, "browser_navigate", url=url)
    answer = await run(browser, "browser_press_key", key="Enter")
    assert "pressed Enter" in answer and "[ref=e" in answer
    with pytest.raises(ToolFailure):
        await run(browser, "browser_press_key", key="NoSuchKey")


async def test_click_and_type_answer_with_a_capped_snapshot(
    browser: tuple[BrowserTools, ToolContext], node: Node
) -> None:
    items = "".join(f"<li>item number {i} with some words</li>" for i in range(2000))
    url = node.page(
        "big.html",
        "<title>Big</title><button onclick=\"this.textContent='Done!'\">Go</button>"
        f"<input aria-label='Name'><ul>{items}</ul>",
    )
    await run(browser, "browser_navigate", url=url)
    clicked = await run(browser, "browser_click", target="button")
    assert 'button "Done!"' in clicked
    assert "[snapshot cut at" in clicked
    assert len(clicked) < 20_000
    typed = await run(browser, "browser_type", target="input", text="zed")
    assert "zed" in typed and "[snapshot cut at" in typed


async def test_wait_for(browser: tuple[BrowserTools, ToolContext], node: Node) -> None:
    url = node.page(
        "later.html",
        "<title>Later</title><p id='a'>loading</p><script>"
        "setTimeout(() => { document.getElementById('a').textContent = 'ready now' }, 300)</script>",
    )
    await run(browser, "browser_navigate", url=url)
    said = await run(browser, "browser_wait_for", text="ready now", text_gone="loading", timeout_s=5)
    assert "ready now" in said
    began = time.monotonic()
    with pytest.raises(ToolFailure):
        await run(browser, "browser_wait_for", text="never appears", timeout_s=0.5)
    assert time.monotonic() - began < 3
    await run(browser, "browser_wait_for", target="#a", timeout_s=2)


async def test_file_upload_inside_the_roots_only(
    browser: tuple[BrowserTools, ToolContext], node: Node, tmp_path: Path
) -> None:
    (node.root / "report.txt").write_text("twelve bytes")
    (tmp_path / "outside.txt").write_text("no")
    url = node.page(
        "upload.html",
        "<title>Upload</title><input type='file' aria-label='File' multiple><p id='o'>nothing</p><script>"
        "document.querySelector('input').onchange = e => { document.getElementById('o').textContent ="
        " [...e.target.files].map(f => f.name + ':' + f.size).join(',') }</script>",
    )
    await run(browser, "browser_navigate", url=url)
    answer = await run(browser, "browser_file_upload", target="input", paths=["report.txt"])
    assert "report.txt:12" in answer
    for bad in (str(tmp_path / "outside.txt"), "../outside.txt", str(node.root / "missing.txt")):
        with pytest.raises(ToolFailure):
            await run(browser, "browser_file_upload", target="input", paths=[bad])


async def test_new_tools_are_serialised_with_the_rest(
    browser: tuple[BrowserTools, ToolContext], node: Node
) -> None:
    url = node.page("p.html", "<title>P</title><p>text</p>")
    await run(browser, "browser_navigate", url=url)
    results = await asyncio.gather(
        run(browser, "browser_snapshot"),
        run(browser, "browser_tabs", action="list"),
        run(browser, "browser_press_key", key="Tab"),
    )
    assert "text" in results[0] and "P" in results[1]


async def test_a_directory_is_an_index_without_the_agent_files(
    browser: tuple[BrowserTools, ToolContext], node: Node
) -> None:
    (node.root / "visible.txt").write_text("v")
    os.link(node.credentials, node.root / "alias.json")
    await run(browser, "browser_navigate", url=node.root.as_uri() + "/")
    index = await run(browser, "browser_snapshot")
    assert "visible.txt" in index and ".cortex/" in index
    assert "alias.json" not in index  # a hard link to the credential is not even listed
    await run(browser, "browser_navigate", url=node.home.as_uri() + "/")
    inside = await run(browser, "browser_snapshot")
    assert "credentials.json" not in inside and "agent.toml" not in inside
    with pytest.raises(ToolFailure):
        await run(browser, "browser_file_upload", target="input", paths=[str(node.root)])
