"""The browser session the browser tools share: a real Chromium, driven through Playwright.

Sits under `desktop_agent.tools.browser.tools` (the tool functions) and over `settings`, `files`
(every `file:` request of the context is answered there) and `image`. The engine
(`desktop_agent.engine`) validates arguments, checks policy and writes the audit log before a tool runs.
One `BrowserCore` belongs to one node and owns one browser, one context, its tabs and the active page,
so navigate -> snapshot -> click by ref -> screenshot work in sequence.

Rules:
1. The browser starts lazily on the first browser call and closes after `browser_idle_timeout_s` without
   one (a background timer, pushed back by every call).
2. Browser calls run one at a time (an `asyncio.Lock`); other tools are not affected.
3. Every await on Playwright is bounded (Playwright's own timeouts plus an outer `asyncio.timeout`):
   a page that never loads, a selector that matches nothing or a wedged browser ends the call with a clear
   result instead of a hang.
4. A browser that died (crash, killed process) fails the current call and is replaced by a fresh one at
   the next call. A cancelled call releases the lock and leaves the session usable.
5. Only the policy's schemes (default http, https, file) are opened. Chromium never reads a local file
   itself: a route on the whole context for `file:` sends every file request (navigation, subresource,
   frame, fetch) to `files.FileGuard`, which serves allowed files from a safely opened fd and refuses
   the rest (outside the roots, the agent's own files by identity, protected paths).
6. Dialogs are dismissed and JavaScript errors collected; both are reported in the next result's text.
7. A target matching ``^e[0-9]+$`` is a ref from the latest snapshot (refs are renumbered
   ``e1, e2, ...`` in document order; Playwright's own frame-prefixed refs stay internal). Anything else
   is a CSS selector. Actions answer with a new snapshot, capped at `ACTION_SNAPSHOT_CHARS`.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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

from desktop_agent.tools.base import ToolFailure, ToolResult
from desktop_agent.tools.browser.files import FileGuard, FileRefused
from desktop_agent.tools.browser.settings import (
    CHROMIUM_ARGS,
    DEFAULT_EXECUTABLE,
    BrowserSettings,
    BrowserTimeouts,
)

__all__ = [
    "ACTION_SNAPSHOT_CHARS",
    "ERROR_PAGE",
    "MAX_SNAPSHOT_CHARS",
    "BrowserCore",
    "Session",
    "first_line",
]

_REF = re.compile(r"^e[0-9]+$")
_SNAPSHOT_REF = re.compile(r"\[ref=((?:f[0-9]+)?e[0-9]+)\]")
_API_PREFIX = re.compile(r"^[A-Z][A-Za-z]*\.[a-z][A-Za-z]*: ")
ERROR_PAGE = re.compile(r"^chrome-error:")
MAX_SNAPSHOT_CHARS = 200_000
ACTION_SNAPSHOT_CHARS = 16_000
_MAX_NOTES = 20


@dataclass
class Session:
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


def first_line(exc: BaseException) -> str:
    """The useful part of a Playwright error: its first line, without the "Page.goto: " API prefix."""
    text = str(exc).strip() or type(exc).__name__
    return _API_PREFIX.sub("", text.splitlines()[0])


class BrowserCore:
    """One node's lazily started Chromium, its tabs, and the checked path of every browser call."""

    def __init__(
        self,
        get_policy: Callable[[], Any],
        *,
        timeouts: BrowserTimeouts | None = None,
        viewport: tuple[int, int] = (1280, 800),
        home: Path | None = None,
    ) -> None:
        self._get_policy = get_policy
        self.files = FileGuard(home)
        self._timeouts = timeouts or BrowserTimeouts()
        self._viewport = viewport
        self._lock = asyncio.Lock()
        self._session: Session | None = None
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

    async def aclose(self) -> None:
        """Stop the idle timer and close the browser; a later call would start a new one."""
        task, self._idle_task = self._idle_task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self._discard_session()

    # -- one call -------------------------------------------------------------------------------------

    async def _run(
        self, tool: str, work: Callable[[Session], Awaitable[ToolResult]], budget_s: float
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
                            f"{tool}: the browser closed or crashed during the call ({first_line(exc)}); "
                            "the next browser call starts a fresh one" + self._drain_notes_text()
                        ) from None
                    raise ToolFailure(
                        f"{tool} failed: {first_line(exc)}" + self._drain_notes_text()
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
        if scheme == "file":
            try:
                self.files.check_url(url, settings)
            except FileRefused as exc:
                raise ToolFailure(f"refused {url}: {exc}") from None

    async def _locate(self, session: Session, target: str) -> Locator:
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

    async def _after_action(self, session: Session, done: str) -> ToolResult:
        """Let a navigation the action started reach DOMContentLoaded (bounded), then answer with the
        page's new snapshot (rule 7) so the caller sees what its action did."""
        with suppress(PlaywrightTimeoutError):
            await session.page.wait_for_load_state(
                "domcontentloaded", timeout=self._timeouts.navigation_s * 1000
            )
        title, url = await self._title_url(session.page)
        try:
            snapshot = await self._snapshot_text(session, ACTION_SNAPSHOT_CHARS)
        except PlaywrightError:
            if not session.alive():
                raise
            snapshot = "[no snapshot: the page is changing; call browser_snapshot]"
        text = f"{done}\nPage: {title}\nURL: {url}\n\n{snapshot}"
        return ToolResult.text(text, structured={"title": title, "url": url})

    async def _snapshot_text(self, session: Session, cap: int) -> str:
        """The active page's accessibility snapshot with our refs (which replace the previous ones)."""
        raw = await session.page.aria_snapshot(mode="ai", timeout=self._timeouts.action_s * 1000)
        refs: dict[str, str] = {}

        def renumber(match: re.Match[str]) -> str:
            ours = f"e{len(refs) + 1}"
            refs[ours] = match.group(1)
            return f"[ref={ours}]"

        text = _SNAPSHOT_REF.sub(renumber, raw)
        session.refs = refs
        if len(text) > cap:
            cut = text.rfind("\n", 0, cap)
            cut = cut if cut > cap // 2 else cap
            text = (
                text[:cut] + f"\n[snapshot cut at {cut} of {len(text)} characters; "
                "refs past the cut still work; browser_snapshot shows up to "
                f"{MAX_SNAPSHOT_CHARS} characters]"
            )
        return text

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

    async def _ensure_session(self) -> Session:
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
            await self._replace_page(session)
        return session

    async def _replace_page(self, session: Session) -> None:
        """Make the newest open tab the tools' page, or open a new one when none is left."""
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

    async def _launch(self, executable: str) -> Session:
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
            raise ToolFailure(f"could not start Chromium at {executable}: {first_line(exc)}") from None
        except BaseException:
            with suppress(Exception):
                await asyncio.shield(self._stop(None, playwright))
            raise
        return Session(playwright, browser, context, page, executable)

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
        """Rule 5: every file: request of every page and frame."""
        url = route.request.url
        try:
            local = await asyncio.to_thread(self.files.read_url, url, self.settings())
        except FileRefused as exc:
            self._note(f"blocked {url}: {exc}")
            with suppress(PlaywrightError):
                await route.abort("accessdenied")
            return
        except Exception as exc:  # never let a file request hang the page
            self._note(f"blocked {url}: {type(exc).__name__}")
            with suppress(PlaywrightError):
                await route.abort("failed")
            return
        with suppress(PlaywrightError):
            await route.fulfill(status=200, body=local.body, content_type=local.mime)

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
