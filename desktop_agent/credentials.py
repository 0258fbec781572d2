"""The node's stored credential: `<home>/credentials.json`, mode 0600, written by `cortex-agent login`.

The credential is a long-lived secret exchanged for short-lived access tokens at `/oauth/token`; it never
appears on a command line or in a log. `CORTEX_NODE_CREDENTIAL` in the environment takes precedence.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Credentials", "default_home", "load_credentials", "save_credentials"]

CREDENTIALS_FILE = "credentials.json"


def default_home() -> Path:
    return Path(os.environ.get("CORTEX_HOME") or Path.home() / ".cortex")


@dataclass(frozen=True)
class Credentials:
    server: str | None
    name: str | None
    credential: str

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(server={self.server!r}, name={self.name!r}, credential=***)"


def save_credentials(home: Path, creds: Credentials) -> Path:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / CREDENTIALS_FILE
    fd, tmp = tempfile.mkstemp(dir=home, prefix=".credentials.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"server": creds.server, "name": creds.name, "credential": creds.credential}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_credentials(home: Path) -> Credentials | None:
    env = os.environ.get("CORTEX_NODE_CREDENTIAL")
    stored: dict[str, str | None] = {}
    try:
        stored = json.loads((home / CREDENTIALS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    secret = env or stored.get("credential")
    if not secret:
        return None
    return Credentials(server=stored.get("server"), name=stored.get("name"), credential=secret.strip())
