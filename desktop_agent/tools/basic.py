"""The two tools every node has: `echo` and `system_info`."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

from desktop_agent.tools.base import ToolContext, ToolResult
from desktop_agent.version import AGENT_VERSION

__all__ = ["echo", "read_os_release", "system_info"]


async def echo(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
    return ToolResult.text(arguments["text"])


def read_os_release() -> dict[str, str]:
    """Parse /etc/os-release (the freedesktop key=value format); empty when absent."""
    fields: dict[str, str] = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    key, sep, value = line.strip().partition("=")
                    if sep and key and not key.startswith("#"):
                        fields[key] = value.strip().strip('"').strip("'")
            return fields
        except OSError:
            continue
    return fields


def system_facts() -> dict[str, Any]:
    uname = platform.uname()
    release = read_os_release()
    return {
        "hostname": socket.gethostname(),
        "os": uname.system,
        "os_release": release.get("PRETTY_NAME", release.get("NAME", "")),
        "kernel": uname.release,
        "arch": uname.machine,
        "cpu_count": os.cpu_count() or 1,
        "python": sys.version.split()[0],
        "agent_version": AGENT_VERSION,
    }


async def system_info(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
    facts = system_facts()
    lines = "\n".join(f"{k}: {v}" for k, v in facts.items())
    return ToolResult.text(lines, structured=facts)
