"""XDG autostart entry for the tray agent: `cortex-agent tray --autostart on|off`.

Layering: a leaf of `desktop_agent` (no I/O beyond one file); called by `desktop_agent.tray.tray_main`.
The entry lives at `$XDG_CONFIG_HOME/autostart/cortex-agent.desktop` (default `~/.config`), per the
freedesktop.org Desktop Application Autostart specification, and starts
`cortex-agent tray --home <home>` at login. It never carries the credential: the tray reads it from
`<home>/credentials.json` like every other command.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["autostart_path", "desktop_entry", "disable_autostart", "enable_autostart"]

ENTRY_NAME = "cortex-agent.desktop"

# Characters that force an Exec argument into double quotes (Desktop Entry spec, "The Exec key").
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def autostart_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the autostart entry goes for this user."""
    env = os.environ if env is None else env
    config_home = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(config_home) / "autostart" / ENTRY_NAME


def _exec_arg(arg: str) -> str:
    if arg and not (set(arg) & _RESERVED):
        return arg.replace("%", "%%")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return '"' + escaped.replace("%", "%%") + '"'


def desktop_entry(home: Path, extra_args: Sequence[str] = ()) -> str:
    """The text of the .desktop file that starts the tray for agent home `home`."""
    argv = ["cortex-agent", "tray", "--home", str(home.expanduser().resolve()), *extra_args]
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=Cortex agent\n"
        "Comment=Keeps this computer connected to its Cortex server (system tray)\n"
        f"Exec={' '.join(_exec_arg(a) for a in argv)}\n"
        "Icon=network-workgroup\n"
        "Terminal=false\n"
        "Categories=Network;Utility;\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def enable_autostart(
    home: Path, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Path:
    """Write (atomically) the autostart entry; returns its path."""
    path = autostart_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cortex-agent.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(desktop_entry(home, extra_args))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def disable_autostart(env: Mapping[str, str] | None = None) -> bool:
    """Remove the autostart entry; False when there was none."""
    path = autostart_path(env)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
