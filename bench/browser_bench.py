"""Browser tool benchmark: what `desktop_agent.tools.browser.BrowserTools` costs at the tool level.

Where it sits: outside the product, beside the other benchmarks; ``python3 -m bench`` picks it up through
``main(quick) -> list[dict]``, and ``python3 -m bench.browser_bench [--quick]`` runs it alone. It serves
pages from a thread on 127.0.0.1 and drives Debian's Chromium twice: through the tools (lock, URL policy,
ref handling, Pillow, base64) and through bare Playwright doing the same work (the reference), so the
ratio is the tools' own overhead. Figures: cold start (launch + first navigate), warm navigate+screenshot
latency, snapshot latency and full-page screenshot throughput in bytes per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from playwright.async_api import async_playwright

from desktop_agent.tools.base import ToolContext, ToolResult
from desktop_agent.tools.browser import CHROMIUM_ARGS, DEFAULT_EXECUTABLE, BrowserTools

__all__ = ["main", "run"]

_PAGE = (
    "<title>Bench</title><h1>Benchmark page</h1>"
    + "".join(
        f"<p>Paragraph {i} <a href='#a{i}'>link {i}</a> <button>Button {i}</button></p>" for i in range(60)
    )
    + "<form><input name=q aria-label=Query><button>Send</button></form>"
)
_LONG = "<title>Long</title>" + "".join(
    f"<p style='margin:0;height:20px;color:hsl({i * 37 % 360},70%,40%)'>Line {i}: "
    + "the quick brown fox jumps over the lazy dog " * 3
    + "</p>"
    for i in range(300)
)


@contextmanager
def _site() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            data = (_LONG if self.path.startswith("/long") else _PAGE).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def _timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    """Milliseconds of each of *n* calls of *fn* (after one warm-up call)."""
    await fn()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _ours(base: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cortex-browser-bench-") as tmp:
        policy = SimpleNamespace(allowed_roots=(Path(tmp),))
        ctx = ToolContext(
            request_id="bench", caller={"sub": "bench", "ws": "bench"}, home=Path(tmp), policy=policy
        )
        tools = BrowserTools(lambda: policy)
        fns = tools.tools()

        async def call(name: str, **arguments: Any) -> ToolResult:
            result = await fns[name](arguments, ctx)
            assert not result.is_error, result.content
            return result

        try:
            started = time.perf_counter()
            await call("browser_navigate", url=f"{base}/page")
            cold_ms = (time.perf_counter() - started) * 1000

            async def nav_shot() -> None:
                await call("browser_navigate", url=f"{base}/page")
                await call("browser_screenshot")

            nav_shot_ms = await _timed(nav_shot, n)
            snapshot_ms = await _timed(lambda: call("browser_snapshot"), n)
            await call("browser_navigate", url=f"{base}/long")
            shot_bytes = 0

            async def full_page() -> None:
                nonlocal shot_bytes
                result = await call("browser_screenshot", full_page=True)
                assert result.structured is not None
                shot_bytes = int(result.structured["bytes"])

            full_ms = await _timed(full_page, n)
        finally:
            await tools.aclose()
    return _figures(cold_ms, nav_shot_ms, snapshot_ms, full_ms, shot_bytes)


async def _reference(base: str, n: int) -> dict[str, float]:
    """The same work through bare Playwright: no lock, policy, refs, Pillow or base64."""
    started = time.perf_counter()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=DEFAULT_EXECUTABLE, args=list(CHROMIUM_ARGS))
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await page.goto(f"{base}/page")
            cold_ms = (time.perf_counter() - started) * 1000

            async def nav_shot() -> None:
                await page.goto(f"{base}/page")
                await page.screenshot()

            nav_shot_ms = await _timed(nav_shot, n)
            snapshot_ms = await _timed(lambda: page.aria_snapshot(mode="ai"), n)
            await page.goto(f"{base}/long")
            shot_bytes = 0

            async def full_page() -> None:
                nonlocal shot_bytes
                shot_bytes = len(await page.screenshot(full_page=True))

            full_ms = await _timed(full_page, n)
        finally:
            await browser.close()
    return _figures(cold_ms, nav_shot_ms, snapshot_ms, full_ms, shot_bytes)


def _figures(
    cold_ms: float, nav_shot_ms: list[float], snapshot_ms: list[float], full_ms: list[float], shot_bytes: int
) -> dict[str, float]:
    full_p50 = statistics.median(full_ms)
    return {
        "cold_ms": cold_ms,
        "nav_shot_p50_ms": statistics.median(nav_shot_ms),
        "snapshot_p50_ms": statistics.median(snapshot_ms),
        "full_page_p50_ms": full_p50,
        "full_page_bytes": float(shot_bytes),
        "full_page_bytes_per_s": shot_bytes / (full_p50 / 1000),
    }


async def run(quick: bool = False) -> list[dict[str, Any]]:
    n = 5 if quick else 20
    with _site() as base:
        ours = await _ours(base, n)
        ref = await _reference(base, n)
    shot_note = f"6000 px text page, {ours['full_page_bytes'] / 1e6:.2f} MB PNG"
    return [
        {
            "scenario": "browser: cold start + first navigate",
            "ours": ours["cold_ms"],
            "reference": ref["cold_ms"],
            "unit": "ms",
            "higher_is_better": False,
            "note": "reference: bare Playwright",
        },
        {
            "scenario": "browser: navigate + screenshot p50",
            "ours": ours["nav_shot_p50_ms"],
            "reference": ref["nav_shot_p50_ms"],
            "unit": "ms",
            "higher_is_better": False,
            "note": "1280x800 PNG, local page",
        },
        {
            "scenario": "browser: snapshot p50",
            "ours": ours["snapshot_p50_ms"],
            "reference": ref["snapshot_p50_ms"],
            "unit": "ms",
            "higher_is_better": False,
        },
        {
            "scenario": "browser: full-page screenshot",
            "ours": ours["full_page_bytes_per_s"],
            "reference": ref["full_page_bytes_per_s"],
            "unit": "bytes/s",
            "note": shot_note,
        },
    ]


def main(quick: bool = False) -> list[dict[str, Any]]:
    """Entry point for ``python3 -m bench``: the rows, or none when there is no Chromium here."""
    if not os.path.exists(DEFAULT_EXECUTABLE):
        return []
    return asyncio.run(run(quick))


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.browser_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 samples per figure instead of 20")
    args = parser.parse_args(argv)
    rows = main(args.quick)
    if not rows:
        print(f"no Chromium at {DEFAULT_EXECUTABLE}; nothing measured")
    for row in rows:
        ratio = row["ours"] / row["reference"] if row["reference"] else float("nan")
        print(
            f"{row['scenario']:<40} ours {row['ours']:>14,.1f}  bare Playwright {row['reference']:>14,.1f}"
            f"  {row['unit']:<8} ({ratio:.2f}x)  {row.get('note', '')}"
        )


if __name__ == "__main__":
    _cli()
