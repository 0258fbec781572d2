"""Browser tools end to end: server → real agent → real Chromium, results back through SDK and CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from sdk import AsyncClient
from tests.support.procs import REPO, AgentProc, ServerProc

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium")

PAGE = b"""<!doctype html><html><head><title>Big page</title><style>body{margin:0}
.tile{width:1920px;height:1080px;background:linear-gradient(90deg,#c33,#33c)}</style>
</head><body><div class="tile"></div>
<button id="b" onclick="this.textContent='clicked'">press</button></body></html>"""


NOISE = b"""<!doctype html><html><head><title>Noise</title><style>body{margin:0}</style></head><body>
<canvas id="c" width="1600" height="1000"></canvas><script>
const c = document.getElementById("c").getContext("2d"), img = c.createImageData(1600, 1000);
for (let i = 0; i < img.data.length; i++) img.data[i] = (i % 4 == 3) ? 255 : Math.random() * 256;
c.putImageData(img, 0, 0);</script></body></html>"""


class _Pages(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/slow":
            _Pages.release.wait(20)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(NOISE if self.path == "/noise" else PAGE)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def site() -> Iterator[str]:
    _Pages.release.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        _Pages.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


async def test_full_page_screenshot_reaches_sdk_and_cli(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], site: str, tmp_path: Path
) -> None:
    start_node("laptop", browser=True)
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        async with asyncio.timeout(60):
            nav = await client.call("laptop", "browser_navigate", {"url": site + "/"})
            assert not nav.is_error, nav.text
            assert nav.structured is not None and nav.structured["title"] == "Big page"
            snap = await client.call("laptop", "browser_snapshot")
            ref = next(word for word in snap.text.split() if word.startswith("[ref=e")).strip("[]")[4:]
            shot = await client.call("laptop", "browser_screenshot", {"full_page": True})
    image = Image.open(io.BytesIO(shot.images[0].data))
    assert image.format == "PNG" and image.width >= 1920 and image.height >= 1080
    assert ref.startswith("e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env.update(PYTHONPATH=str(REPO), CORTEX_TOKEN=server_proc.token())
    out = tmp_path / "shot.png"
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "sdk.cli",
            "--server",
            server_proc.url,
            "call",
            "laptop",
            "browser_screenshot",
            '{"full_page": true}',
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with Image.open(out) as saved:
        assert saved.size == image.size


async def test_other_tools_run_while_the_browser_is_busy(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], site: str
) -> None:
    start_node("laptop", browser=True)
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        slow = client.start("laptop", "browser_navigate", {"url": site + "/slow"})
        async with asyncio.timeout(20):
            assert (await client.call("laptop", "echo", {"text": "meanwhile"})).text == "meanwhile"
            assert not slow.done()
            _Pages.release.set()
            assert not (await slow).is_error


def test_no_browser_means_no_browser_tools(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    agent = start_node("laptop")
    tools = set(server_proc.node("laptop")["tools"])
    assert "echo" in tools and not any(t.startswith("browser_") for t in tools)
    assert any("browser" in line and "--no-browser" in line for line in agent.output)


async def test_mcp_client_gets_a_large_screenshot_as_a_resource_link(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], site: str
) -> None:
    import httpx2
    import mcp_types as types

    from tests.test_mcp import mcp_client

    start_node("laptop", browser=True)
    token = server_proc.token()
    async with asyncio.timeout(90), mcp_client(server_proc, token) as session:
        await session.call_tool("laptop__browser_navigate", {"url": site + "/noise"})
        result = await session.call_tool("laptop__browser_screenshot", {"full_page": True})
        links = [c for c in result.content if isinstance(c, types.ResourceLink)]
        images = [c for c in result.content if isinstance(c, types.ImageContent)]
        # a noise image is several MiB: too large for one MCP message, it comes as a link to the artifact
        assert links and not images, result.content
        # any MCP client reads it with the same session (the default client caps one SSE event at 1 MiB)
        read = await session.read_resource(str(links[0].uri))
        blob = read.contents[0]
        assert isinstance(blob, types.BlobResourceContents) and blob.mime_type == "image/png"
        png = base64.b64decode(blob.blob)
        assert png.startswith(b"\x89PNG") and len(png) > 1024 * 1024
        assert Image.open(io.BytesIO(png)).size[0] >= 1600
    rest_url = str(links[0].uri)  # the link is also a plain URL for the REST API
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        got = await http.get(rest_url)
        assert got.status_code == 200 and got.content == png
    async with httpx2.AsyncClient() as anonymous:
        assert (await anonymous.get(rest_url)).status_code == 401
