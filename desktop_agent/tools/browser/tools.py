"""The browser tools: one async function per `browser_*` tool, over the shared `BrowserCore`.

Sits under the engine (which validates arguments against the manifest, checks policy and audits)
and over `core` (session, tabs, locking, bounded waits, snapshots) and `files` (uploads read through
the same guard as `file://` pages). `browser_click`, `browser_type` and `browser_press_key` answer
with the page's new accessibility snapshot.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any, Literal

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import FilePayload
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from desktop_agent.tools.base import ToolContext, ToolFailure, ToolFunc, ToolResult
from desktop_agent.tools.browser.core import (
    ERROR_PAGE,
    MAX_SNAPSHOT_CHARS,
    BrowserCore,
    Session,
    first_line,
)
from desktop_agent.tools.browser.files import FileRefused
from desktop_agent.tools.browser.image import prepare_image

__all__ = ["BrowserTools"]

MAX_UPLOAD_BYTES = 64 << 20


class BrowserTools(BrowserCore):
    """The browser_* tools of one node, sharing one lazily started Chromium."""

    def tools(self) -> dict[str, ToolFunc]:
        return {
            "browser_navigate": self.navigate,
            "browser_click": self.click,
            "browser_type": self.type,
            "browser_screenshot": self.screenshot,
            "browser_snapshot": self.snapshot,
            "browser_tabs": self.tabs,
            "browser_press_key": self.press_key,
            "browser_wait_for": self.wait_for,
            "browser_file_upload": self.file_upload,
        }

    # -- pages ----------------------------------------------------------------------------------------------

    async def navigate(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        url = str(arguments["url"]).strip()
        self._check_url(url)
        nav_s = self._timeouts.navigation_s

        async def work(session: Session) -> ToolResult:
            return await self._open(session, url)

        return await self._run("browser_navigate", work, nav_s)

    async def _open(self, session: Session, url: str) -> ToolResult:
        """Load `url` in the active page (bounded), answer with title, url and HTTP status."""
        nav_s = self._timeouts.navigation_s
        page = session.page
        loop = asyncio.get_running_loop()
        deadline = loop.time() + nav_s
        for attempt in (1, 2):
            try:
                response = await page.goto(url, wait_until="commit", timeout=nav_s * 1000)
                break
            except PlaywrightTimeoutError:
                raise ToolFailure(f"{url} did not respond within {nav_s:g} s") from None
            except PlaywrightError as exc:
                if not session.alive() or page.is_closed():
                    raise
                # A failed load commits Chromium's error page right after goto() gives up; let it
                # settle so that the next navigation or screenshot is not interrupted by it.
                with suppress(PlaywrightError):
                    await page.wait_for_url(ERROR_PAGE, wait_until="load", timeout=1000)
                if attempt == 1 and "interrupted by another navigation" in str(exc):
                    continue
                raise ToolFailure(f"could not open {url}: {first_line(exc)}") from None
        state = await self._settle(page, deadline)
        title, final_url = await self._title_url(page)
        structured: dict[str, Any] = {"title": title, "url": final_url, "load_state": state}
        if response is not None:
            structured["status"] = response.status
        text = f"Opened {final_url}\nTitle: {title}"
        if response is not None:
            text += f"\nHTTP status: {response.status}"
        if state != "load":
            text += f"\nNote: the page had not finished loading after {nav_s:g} s (reached {state})."
        return ToolResult.text(text, structured=structured)

    async def click(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        target = str(arguments["target"])

        async def work(session: Session) -> ToolResult:
            locator = await self._locate(session, target)
            await self._act(locator.click(timeout=self._timeouts.action_s * 1000), target, "click")
            return await self._after_action(session, f"Clicked {target}.")

        return await self._run("browser_click", work, self._timeouts.action_s + self._timeouts.navigation_s)

    async def type(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        target = str(arguments["target"])
        text = str(arguments["text"])
        submit = bool(arguments.get("submit", False))

        async def work(session: Session) -> ToolResult:
            locator = await self._locate(session, target)
            action_ms = self._timeouts.action_s * 1000
            await self._act(locator.fill(text, timeout=action_ms), target, "type into")
            done = f"Typed {len(text)} characters into {target}"
            if submit:
                await self._act(locator.press("Enter", timeout=action_ms), target, "submit")
                done += " and pressed Enter"
            return await self._after_action(session, done + ".")

        timeout = 2 * self._timeouts.action_s + self._timeouts.navigation_s
        return await self._run("browser_type", work, timeout)

    async def screenshot(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        full_page = bool(arguments.get("full_page", False))
        fmt = arguments.get("format", "png")
        if fmt not in ("png", "jpeg"):
            raise ToolFailure(f"format must be png or jpeg, not {fmt!r}")
        image_type: Literal["png", "jpeg"] = "png" if fmt == "png" else "jpeg"
        quality = arguments.get("quality")
        if quality is not None and (not isinstance(quality, int) or not 0 <= quality <= 100):
            raise ToolFailure("quality must be an integer from 0 to 100")
        if image_type == "jpeg" and quality is None:
            quality = 80
        max_width = arguments.get("max_width")
        if max_width is not None and (not isinstance(max_width, int) or max_width < 1):
            raise ToolFailure("max_width must be a positive integer")
        shot_s = self._timeouts.navigation_s

        async def work(session: Session) -> ToolResult:
            data = await session.page.screenshot(
                full_page=full_page,
                type=image_type,
                quality=quality if image_type == "jpeg" else None,
                timeout=shot_s * 1000,
            )
            encoded, width, height, size = await asyncio.to_thread(
                prepare_image, data, image_type, quality, max_width
            )
            mime = f"image/{image_type}"
            summary = f"Screenshot {width}x{height} {image_type.upper()}, {size} bytes" + (
                " (full page)" if full_page else ""
            )
            return ToolResult(
                content=[
                    {"type": "image", "data": encoded, "mimeType": mime},
                    {"type": "text", "text": summary},
                ],
                structured={"width": width, "height": height, "mimeType": mime, "bytes": size},
            )

        return await self._run("browser_screenshot", work, shot_s + 10.0)

    async def snapshot(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        action_s = self._timeouts.action_s

        async def work(session: Session) -> ToolResult:
            text = await self._snapshot_text(session, MAX_SNAPSHOT_CHARS)
            title, url = await self._title_url(session.page)
            return ToolResult.text(f"Page: {title}\nURL: {url}\n\n{text}")

        return await self._run("browser_snapshot", work, action_s + 5.0)

    # -- tabs, keys, waiting, uploads ---------------------------------------------------------------

    async def _tab_list(self, session: Session) -> ToolResult:
        tabs = []
        for index, page in enumerate(p for p in session.context.pages if not p.is_closed()):
            title, url = await self._title_url(page)
            tabs.append({"index": index, "title": title, "url": url, "active": page is session.page})
        lines = [
            f"{'*' if t['active'] else ' '} [{t['index']}] {t['title'] or '(untitled)'} - {t['url']}"
            for t in tabs
        ]
        return ToolResult.text("\n".join(lines) or "no tabs", structured={"tabs": tabs})

    async def tabs(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        action = arguments["action"]
        index = arguments.get("index")
        url = arguments.get("url")
        if url is not None:
            url = str(url).strip()
            self._check_url(url)

        async def work(session: Session) -> ToolResult:
            pages = [p for p in session.context.pages if not p.is_closed()]
            if action in ("select", "close") and index is not None and not 0 <= index < len(pages):
                raise ToolFailure(f"no tab {index}: there are {len(pages)} (0-based)")
            if action == "new":
                self._opening_page = True
                try:
                    page = await session.context.new_page()
                finally:
                    self._opening_page = False
                session.page, session.refs = page, {}
                if url is not None:
                    await self._open(session, url)
            elif action == "select":
                if index is None:
                    raise ToolFailure("select needs the tab's index")
                session.page, session.refs = pages[index], {}
                await session.page.bring_to_front()
            elif action == "close":
                victim = pages[index] if index is not None else session.page
                await victim.close()
                if victim is session.page:
                    await self._replace_page(session)
            return await self._tab_list(session)

        return await self._run("browser_tabs", work, self._timeouts.navigation_s + self._timeouts.action_s)

    async def press_key(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        key = str(arguments["key"])

        async def work(session: Session) -> ToolResult:
            try:
                await session.page.keyboard.press(key)
            except PlaywrightError as exc:
                if not session.alive():
                    raise
                raise ToolFailure(f"could not press {key!r}: {first_line(exc)}") from None
            return await self._after_action(session, f"Pressed {key}.")

        return await self._run(
            "browser_press_key", work, self._timeouts.action_s + self._timeouts.navigation_s
        )

    async def wait_for(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        timeout_s = float(arguments.get("timeout_s", 10))
        text, gone, target = arguments.get("text"), arguments.get("text_gone"), arguments.get("target")

        async def work(session: Session) -> ToolResult:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            page = session.page

            def left_ms() -> float:
                return max((deadline - loop.time()) * 1000, 1.0)

            waited: list[str] = []
            try:
                if text is not None:
                    await page.get_by_text(text).first.wait_for(state="visible", timeout=left_ms())
                    waited.append(f"text {text!r} is there")
                if gone is not None:
                    await page.get_by_text(gone).first.wait_for(state="hidden", timeout=left_ms())
                    waited.append(f"text {gone!r} is gone")
                if target is not None:
                    locator = await self._locate(session, target)
                    await locator.first.wait_for(state="visible", timeout=left_ms())
                    waited.append(f"{target} is visible")
            except PlaywrightTimeoutError:
                done = "; ".join(waited) or "nothing yet"
                raise ToolFailure(f"the page did not get there within {timeout_s:g} s ({done})") from None
            if not waited:
                await asyncio.sleep(timeout_s)
                waited.append(f"waited {timeout_s:g} s")
            title, url = await self._title_url(page)
            return ToolResult.text(f"{'; '.join(waited)}.\nPage: {title}\nURL: {url}")

        return await self._run("browser_wait_for", work, timeout_s + self._timeouts.action_s)

    async def file_upload(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        target = str(arguments["target"])
        settings = self.settings()
        payloads: list[FilePayload] = []
        total = 0
        for raw in arguments["paths"]:
            try:
                local = await asyncio.to_thread(self.files.read_named, raw, settings)
            except FileRefused as exc:
                raise ToolFailure(f"refused to upload {raw}: {exc}") from None
            total += len(local.body)
            if total > MAX_UPLOAD_BYTES:
                raise ToolFailure(f"the files are larger than {MAX_UPLOAD_BYTES >> 20} MiB together")
            payloads.append({"name": local.path.name, "mimeType": local.mime, "buffer": local.body})

        async def work(session: Session) -> ToolResult:
            locator = await self._locate(session, target)
            await self._act(
                locator.set_input_files(payloads, timeout=self._timeouts.action_s * 1000), target, "upload to"
            )
            names = ", ".join(p["name"] for p in payloads)
            return await self._after_action(session, f"Set {len(payloads)} file(s) on {target}: {names}.")

        return await self._run(
            "browser_file_upload", work, self._timeouts.action_s + self._timeouts.navigation_s
        )
