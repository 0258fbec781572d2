"""The node's browser tools: a real Chromium, driven through Playwright, for the planner.

Sits beside `desktop_agent.tools.shell`, `fs` and `process`, under the engine. The package's layers,
bottom up: `settings` (policy values, Chromium flags), `files` (the only way the browser reads a local
file), `image` (screenshot post-processing), `core` (the session, tabs, locking, snapshots), `tools`
(one function per tool).
"""

from desktop_agent.tools.browser.settings import (
    CHROMIUM_ARGS,
    DEFAULT_EXECUTABLE,
    BrowserSettings,
    BrowserTimeouts,
)
from desktop_agent.tools.browser.tools import BrowserTools

__all__ = ["CHROMIUM_ARGS", "DEFAULT_EXECUTABLE", "BrowserSettings", "BrowserTimeouts", "BrowserTools"]
