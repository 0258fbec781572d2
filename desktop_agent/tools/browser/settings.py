"""What the browser tools are allowed and how long they may take: value objects read from the policy.

Sits at the bottom of the `desktop_agent.tools.browser` package: `files` and `core` read these
settings; nothing here touches Playwright or the file system beyond resolving a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

__all__ = ["CHROMIUM_ARGS", "DEFAULT_EXECUTABLE", "BrowserSettings", "BrowserTimeouts", "file_url_path"]

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


@dataclass(frozen=True)
class BrowserTimeouts:
    """How long each kind of browser work may take, in seconds."""

    navigation_s: float = 15.0
    action_s: float = 5.0
    launch_s: float = 30.0
    close_s: float = 5.0


def file_url_path(url: str) -> Path | None:
    """The local path a file: URL names (symlinks resolved), or None when it names none."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        return None
    try:
        return Path(os.path.realpath(url2pathname(unquote(parts.path))))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class BrowserSettings:
    """The browser part of the owner's policy, read with defaults so any policy object will do."""

    enabled: bool = True
    executable: str | None = None
    idle_timeout_s: float = 300.0
    allowed_schemes: tuple[str, ...] = ("http", "https", "file")
    allowed_roots: tuple[Path, ...] = ()
    protected_paths: tuple[Path, ...] = ()

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
            # agent.toml's top-level `protected_paths` (when the policy knows it): never shown either.
            protected_paths=tuple(Path(p) for p in getattr(policy, "protected_paths", None) or ()),
        )

    def root_of(self, target: Path) -> Path | None:
        """The allowed root (resolved) that `target` (resolved) lies in, or None."""
        for root in self.allowed_roots:
            resolved_root = Path(os.path.realpath(os.path.expanduser(root)))
            if target == resolved_root or target.is_relative_to(resolved_root):
                return resolved_root
        return None

    def file_url_allowed(self, url: str) -> bool:
        """Whether a file: URL names a path under one of the allowed roots (symlinks resolved)."""
        target = file_url_path(url)
        return "file" in self.allowed_schemes and target is not None and self.root_of(target) is not None
