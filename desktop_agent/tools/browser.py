"""The node's browser tools: a real Chromium, driven through Playwright, for the planner.

Sits beside `desktop_agent.tools.shell` and `desktop_agent.tools.fs`, under the engine
(`desktop_agent.engine`), which validates arguments, checks policy and writes the audit log before a
tool here runs. One `BrowserTools` belongs to one node session and owns one browser, one context and
one current page, so navigate -> snapshot -> click by ref -> screenshot work in sequence.

Rules:
1. The browser starts lazily on the first browser call and closes after `browser_idle_timeout_s` without
   one (a background timer, pushed back by every call).
2. Browser calls run one at a time (an `asyncio.Lock`); other tools are not affected.
3. Every await on Playwright is bounded (Playwright's own timeouts plus an outer `asyncio.timeout`):
   a page that never loads, a selector that matches nothing or a wedged browser ends the call with a clear
   result instead of a hang.
4. A browser that died (crash, killed process) fails the current call and is replaced by a fresh one at
   the next call. A cancelled call releases the lock and leaves the session usable.
5. Only http, https and file URLs (the policy's allow-list) are opened; a file URL, including any
   subresource or frame a page pulls in, must lie under the allowed roots (symlinks resolved).
6. Dialogs are dismissed and JavaScript errors collected; both are reported in the next result's text.
7. A target matching ``^e[0-9]+$`` is a ref from the latest `browser_snapshot` (refs are renumbered
   ``e1, e2, ...`` in document order; Playwright's own frame-prefixed refs stay internal). Anything else
   is a CSS selector.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from PIL import Image
from playwright.async_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    Playwright,
    Route,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from desktop_agent.tools.base import ToolContext, ToolFailure, ToolFunc, ToolResult

__all__ = [
    "CHROMIUM_ARGS",
    "DEFAULT_EXECUTABLE",
    "BrowserSettings",
    "BrowserTimeouts",
    "BrowserTools",
]

DEFAULT_EXECUTABLE = "/usr/bin/chromium"

CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # Without these Chromium keeps calling home, which floods a closed network with refused connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)

_REF = re.compile(r"^e[0-9]+$")
_SNAPSHOT_REF = re.compile(r"\[ref=((?:f[0-9]+)?e[0-9]+)\]")
_API_PREFIX = re.compile(r"^[A-Z][A-Za-z]*\.[a-z][A-Za-z]*: ")
_ERROR_PAGE = re.compile(r"^chrome-error:")
_MAX_SNAPSHOT_CHARS = 200_000
_MAX_NOTES = 20


@dataclass(frozen=True)
class BrowserTimeouts:
    """How long each kind of browser work may take, in seconds."""

    navigation_s: float = 15.0
    action_s: float = 5.0
    launch_s: float = 30.0
    close_s: float = 5.0


@dataclass(frozen=True)
class BrowserSettings:
    """The browser part of the owner's policy, read with defaults so any policy object will do."""

    enabled: bool = True
    executable: str | None = None
    idle_timeout_s: float = 300.0
    allowed_schemes: tuple[str, ...] = ("http", "https", "file")
    allowed_roots: tuple[Path, ...] = ()

    @classmethod
    def from_policy(cls, policy: Any) -> BrowserSettings:
        executable = getattr(policy, "browser_executable", None)
        if not executable and os.path.exists(DEFAULT_EXECUTABLE):
            executable = DEFAULT_EXECUTABLE
        return cls(
            enabled=bool(getattr(policy, "browser_enabled", True)),
            executable=str(executable) if executable else None,
            idle_timeout_s=float(getattr(policy, "browser_idle_timeout_s", 300.0)),
            allowed_schemes=tuple(
                s.lower() for s in getattr(policy, "browser_allowed_schemes", ("http", "https", "file"))
            ),
            allowed_roots=tuple(Path(r) for r in getattr(policy, "allowed_roots", ())),
        )

    def file_url_allowed(self, url: str) -> bool:
        """Whether a file: URL names a path under one of the allowed roots (symlinks resolved)."""
        parts = urlsplit(url)
        if "file" not in self.allowed_schemes or parts.netloc not in ("", "localhost"):
            return False
        try:
            target = Path(url2pathname(unquote(parts.path))).resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        for root in self.allowed_roots:
            try:
                resolved_root = root.expanduser().resolve()
            except (OSError, RuntimeError):
                continue
            if target == resolved_root or target.is_relative_to(resolved_root):
                return True
        return False


@dataclass
class _Session:
    """One live browser: the Playwright driver, Chromium, its context and the page tools act on."""

    playwright: Playwright
    browser: Browser
    context: BrowserContext
    page: Page
    executable: str
    crashed: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # our ref (e7) -> Playwright's aria-ref (f2e7)

    def alive(self) -> bool:
        return self.browser.is_connected() and not self.crashed


def _first_line(exc: BaseException) -> str:
    """The useful part of a Playwright error: its first line, without the "Page.goto: " API prefix."""
    text = str(exc).strip() or type(exc).__name__
    return _API_PREFIX.sub("", text.splitlines()[0])


class BrowserTools:
    """The browser_* tools of one node session, sharing one lazily started Chromium."""

    def __init__(
        self,
        get_policy: Callable[[], Any],
        *,
        timeouts: BrowserTimeouts | None = None,
        viewport: tuple[int, int] = (1280, 800),
    ) -> None:
        self._get_policy = get_policy
        self._timeouts = timeouts or BrowserTimeouts()
        self._viewport = viewport
        self._lock = asyncio.Lock()
        self._session: _Session | None = None
        self._opening_page = False  # our own new_page(), not a popup the page opened
        self._notes: list[str] = []
        self._dropped_notes = 0
        self._idle_deadline = 0.0
        self._idle_task: asyncio.Task[None] | None = None

    # -- public surface -------------------------------------------------------------------------------

    def settings(self) -> BrowserSettings:
        return BrowserSettings.from_policy(self._get_policy())

    @property
    def running(self) -> bool:
        """Whether a browser is up right now (it starts at the first call and stops when idle)."""
        return self._session is not None

    def unavailable_reason(self) -> str | None:
        """None when the browser tools can run; otherwise why not, in words for the owner."""
        settings = self.settings()
        if not settings.enabled:
            return "browser disabled (--no-browser)"
        if settings.executable is None:
            return f"no Chromium at {DEFAULT_EXECUTABLE} (set browser.executable in agent.toml)"
        path = Path(settings.executable)
        if not path.is_file() or not os.access(path, os.X_OK):
            return f"no Chromium at {settings.executable}"
        return None

    def tools(self) -> dict[str, ToolFunc]:
        return {
            "browser_navigate": self.navigate,
            "browser_click": self.click,
            "browser_type": self.type,
            "browser_screenshot": self.screenshot,
            "browser_snapshot": self.snapshot,
        }

    async def aclose(self) -> None:
        """Stop the idle timer and close the browser; a later call would start a new one."""
        task, self._idle_task = self._idle_task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self._discard_session()

    # -- tools ----------------------------------------------------------------------------------------

    async def navigate(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        url = str(arguments["url"]).strip()
        self._check_url(url)
        nav_s = self._timeouts.navigation_s

        async def work(session: _Session) -> ToolResult:
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
                        await page.wait_for_url(_ERROR_PAGE, wait_until="load", timeout=1000)
                    if attempt == 1 and "interrupted by another navigation" in str(exc):
                        continue
                    raise ToolFailure(f"could not open {url}: {_first_line(exc)}") from None
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

        return await self._run("browser_navigate", work, nav_s)

    async def click(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        target = str(arguments["target"])

        async def work(session: _Session) -> ToolResult:
            locator = await self._locate(session, target)
            await self._act(locator.click(timeout=self._timeouts.action_s * 1000), target, "click")
            return await self._after_action(session, f"Clicked {target}.")

        return await self._run("browser_click", work, self._timeouts.action_s + self._timeouts.navigation_s)

    async def type(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        target = str(arguments["target"])
        text = str(arguments["text"])
        submit = bool(arguments.get("submit", False))

        async def work(session: _Session) -> ToolResult:
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

        async def work(session: _Session) -> ToolResult:
            data = await session.page.screenshot(
                full_page=full_page,
                type=image_type,
                quality=quality if image_type == "jpeg" else None,
                timeout=shot_s * 1000,
            )
            encoded, width, height, size = await asyncio.to_thread(
                _prepare_image, data, image_type, quality, max_width
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

        async def work(session: _Session) -> ToolResult:
            raw = await session.page.aria_snapshot(mode="ai", timeout=action_s * 1000)
            refs: dict[str, str] = {}

            def renumber(match: re.Match[str]) -> str:
                ours = f"e{len(refs) + 1}"
                refs[ours] = match.group(1)
                return f"[ref={ours}]"

            text = _SNAPSHOT_REF.sub(renumber, raw)
            session.refs = refs
            if len(text) > _MAX_SNAPSHOT_CHARS:
                text = text[:_MAX_SNAPSHOT_CHARS] + "\n[snapshot truncated]"
            title, url = await self._title_url(session.page)
            return ToolResult.text(f"Page: {title}\nURL: {url}\n\n{text}")

        return await self._run("browser_snapshot", work, action_s + 5.0)

    # -- one call -------------------------------------------------------------------------------------

    async def _run(
        self, tool: str, work: Callable[[_Session], Awaitable[ToolResult]], budget_s: float
    ) -> ToolResult:
        reason = self.unavailable_reason()
        if reason is not None:
            raise ToolFailure(reason)
        async with self._lock:
            try:
                session = await self._ensure_session()
                try:
                    # Rule 3: Playwright's own timeouts should fire first; this is the net under them.
                    async with asyncio.timeout(budget_s + 5.0):
                        result = await work(session)
                except TimeoutError:
                    await self._discard_session()
                    raise ToolFailure(
                        f"{tool}: the browser did not answer within {budget_s + 5.0:g} s; it was restarted"
                    ) from None
                except PlaywrightError as exc:
                    if not session.alive():
                        await self._discard_session()
                        raise ToolFailure(
                            f"{tool}: the browser closed or crashed during the call ({_first_line(exc)}); "
                            "the next browser call starts a fresh one" + self._drain_notes_text()
                        ) from None
                    raise ToolFailure(
                        f"{tool} failed: {_first_line(exc)}" + self._drain_notes_text()
                    ) from None
                except ToolFailure as exc:
                    raise ToolFailure(str(exc) + self._drain_notes_text()) from None
            finally:
                self._touch()
        notes = self._drain_notes()
        if notes:
            result.content.append({"type": "text", "text": "Notes:\n" + "\n".join(f"- {n}" for n in notes)})
            if result.structured is not None:
                result.structured["notes"] = notes
        return result

    def _check_url(self, url: str) -> None:
        settings = self.settings()
        scheme = urlsplit(url).scheme.lower()
        allowed = ", ".join(f"{s}:" for s in settings.allowed_schemes)
        if not scheme:
            raise ToolFailure(f"{url!r} has no scheme; use a full URL such as https://example.com/")
        if scheme not in settings.allowed_schemes:
            raise ToolFailure(f"refused {scheme}: URL; the browser opens only {allowed} URLs")
        if scheme == "file" and not settings.file_url_allowed(url):
            raise ToolFailure(f"refused {url}: file URLs must lie under the node's allowed roots")

    async def _locate(self, session: _Session, target: str) -> Locator:
        page = session.page
        if not _REF.match(target):
            return page.locator(target)
        if session.refs and target not in session.refs:
            raise ToolFailure(f"no ref {target} in the latest browser_snapshot; take a new snapshot")
        locator = page.locator(f"aria-ref={session.refs.get(target, target)}")
        try:
            count = await locator.count()
        except PlaywrightError:
            if not session.alive():
                raise
            count = 0  # "Invalid frame in aria-ref selector": the frame of that ref is gone
        if count == 0:
            raise ToolFailure(
                f"ref {target} no longer matches an element (the page changed); take a new browser_snapshot"
            )
        return locator

    async def _act(self, action: Awaitable[None], target: str, verb: str) -> None:
        try:
            await action
        except PlaywrightTimeoutError:
            raise ToolFailure(
                f"could not {verb} {target!r}: no visible, enabled element matched within "
                f"{self._timeouts.action_s:g} s"
            ) from None

    async def _after_action(self, session: _Session, done: str) -> ToolResult:
        """Let a navigation the action started reach DOMContentLoaded (bounded), then say where we are."""
        with suppress(PlaywrightTimeoutError):
            await session.page.wait_for_load_state(
                "domcontentloaded", timeout=self._timeouts.navigation_s * 1000
            )
        title, url = await self._title_url(session.page)
        return ToolResult.text(f"{done}\nPage: {title}\nURL: {url}", structured={"title": title, "url": url})

    async def _settle(self, page: Page, deadline: float) -> str:
        """Wait for DOMContentLoaded, then load, until the deadline; return the last state reached."""
        state = "commit"
        loop = asyncio.get_running_loop()
        states: tuple[Literal["domcontentloaded", "load"], ...] = ("domcontentloaded", "load")
        for next_state in states:
            remaining_ms = max((deadline - loop.time()) * 1000, 1.0)
            try:
                await page.wait_for_load_state(next_state, timeout=remaining_ms)
            except PlaywrightTimeoutError:
                break
            state = next_state
        return state

    async def _title_url(self, page: Page) -> tuple[str, str]:
        # page.title() evaluates in the document, which waits while a navigation is in flight: bound it.
        title = ""
        with suppress(PlaywrightError, TimeoutError):
            async with asyncio.timeout(min(self._timeouts.action_s, 2.0)):
                title = await page.title()
        return title, page.url

    # -- session lifecycle ----------------------------------------------------------------------------

    async def _ensure_session(self) -> _Session:
        settings = self.settings()
        session = self._session
        if session is not None and (not session.alive() or session.executable != settings.executable):
            if not session.alive():
                self._note("the previous browser had closed or crashed; a fresh one was started")
            await self._discard_session()
            session = None
        if session is None:
            assert settings.executable is not None  # unavailable_reason() said so
            session = self._session = await self._launch(settings.executable)
        if session.page.is_closed():
            # The tools' page was closed (window.close()): fall back to another tab or a new one.
            open_pages = [p for p in session.context.pages if not p.is_closed()]
            if open_pages:
                session.page = open_pages[-1]
            else:
                self._opening_page = True
                try:
                    session.page = await session.context.new_page()
                finally:
                    self._opening_page = False
            session.refs = {}
        return session

    async def _launch(self, executable: str) -> _Session:
        playwright = await async_playwright().start()
        try:
            async with asyncio.timeout(self._timeouts.launch_s):
                browser = await playwright.chromium.launch(
                    executable_path=executable,
                    args=list(CHROMIUM_ARGS),
                    headless=True,
                    timeout=self._timeouts.launch_s * 1000,
                )
                width, height = self._viewport
                context = await browser.new_context(
                    viewport={"width": width, "height": height}, accept_downloads=False
                )
                await context.route(re.compile(r"^file:"), self._route_file)
                context.on("page", self._on_page)
                self._opening_page = True
                try:
                    page = await context.new_page()
                finally:
                    self._opening_page = False
        except (PlaywrightError, TimeoutError) as exc:
            with suppress(Exception):
                await asyncio.shield(self._stop(None, playwright))
            raise ToolFailure(f"could not start Chromium at {executable}: {_first_line(exc)}") from None
        except BaseException:
            with suppress(Exception):
                await asyncio.shield(self._stop(None, playwright))
            raise
        return _Session(playwright, browser, context, page, executable)

    async def _discard_session(self) -> None:
        session = self._session
        if session is None:
            return
        try:
            # Shielded: a cancelled caller must not leave a Chromium or a driver process behind.
            await asyncio.shield(self._stop(session.browser, session.playwright))
        finally:
            if self._session is session:
                self._session = None

    async def _stop(self, browser: Browser | None, playwright: Playwright) -> None:
        if browser is not None:
            with suppress(PlaywrightError, TimeoutError):
                async with asyncio.timeout(self._timeouts.close_s):
                    await browser.close()
        with suppress(PlaywrightError, TimeoutError):
            async with asyncio.timeout(self._timeouts.close_s):
                await playwright.stop()

    def _touch(self) -> None:
        """Push the idle deadline back; start the idle timer if a browser is up and none runs."""
        loop = asyncio.get_running_loop()
        self._idle_deadline = loop.time() + self.settings().idle_timeout_s
        if self._session is not None and (self._idle_task is None or self._idle_task.done()):
            self._idle_task = loop.create_task(self._close_when_idle(), name="browser-idle-timer")

    async def _close_when_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = self._idle_deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            async with self._lock:
                if self._idle_deadline > loop.time():
                    continue
                await self._discard_session()
                return

    # -- page events ----------------------------------------------------------------------------------

    def _on_page(self, page: Page) -> None:
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda error: self._note(f"JavaScript error: {error.name}: {error.message}"))
        page.on("crash", self._on_crash)
        session = self._session
        if session is not None and not self._opening_page and page is not session.page:
            # A popup or target=_blank tab: the planner most likely wants to see it.
            session.page = page
            session.refs = {}
            self._note("a new tab opened; the browser tools now act on it")

    def _on_crash(self, page: Page) -> None:
        self._note("the page crashed")
        session = self._session
        if session is not None and page is session.page:
            session.crashed = True

    async def _on_dialog(self, dialog: Dialog) -> None:
        self._note(f"a {dialog.type} dialog said {dialog.message!r}; it was dismissed")
        with suppress(PlaywrightError):
            await dialog.dismiss()

    async def _route_file(self, route: Route) -> None:
        url = route.request.url
        with suppress(PlaywrightError):
            if self.settings().file_url_allowed(url):
                await route.continue_()
            else:
                self._note(f"blocked {url}: outside the node's allowed roots")
                await route.abort("accessdenied")

    def _note(self, text: str) -> None:
        if text in self._notes:
            return
        if len(self._notes) < _MAX_NOTES:
            self._notes.append(text)
        else:
            self._dropped_notes += 1

    def _drain_notes(self) -> list[str]:
        notes, self._notes = self._notes, []
        if self._dropped_notes:
            notes.append(f"... and {self._dropped_notes} more")
            self._dropped_notes = 0
        return notes

    def _drain_notes_text(self) -> str:
        notes = self._drain_notes()
        return ("\nNotes:\n" + "\n".join(f"- {n}" for n in notes)) if notes else ""


def _prepare_image(
    data: bytes, image_type: Literal["png", "jpeg"], quality: int | None, max_width: int | None
) -> tuple[str, int, int, int]:
    """Downscale to max_width when wider, then base64: (data, width, height, bytes). Runs in a thread."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if max_width is not None and width > max_width:
            new_size = (max_width, max(1, round(height * max_width / width)))
            resized = image.convert("RGB" if image_type == "jpeg" else "RGBA").resize(
                new_size, Image.Resampling.LANCZOS
            )
            out = io.BytesIO()
            if image_type == "jpeg":
                resized.save(out, format="JPEG", quality=quality or 80)
            else:
                resized.save(out, format="PNG", optimize=False)
            data = out.getvalue()
            width, height = new_size
    return base64.b64encode(data).decode("ascii"), width, height, len(data)
