"""Database URLs made safe to print: the password never reaches a log line or an error message.

Layering: a leaf under `server.stores` (re-exported there), imported by every engine module.
"""

from __future__ import annotations

import re

__all__ = ["redact_url"]

_PASSWORD_PARAM = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact_url(url: str) -> str:
    """*url* with any password replaced by ``***``; safe on malformed input."""
    text = str(url)
    head, sep, rest = text.partition("://")
    if sep:
        at = rest.rfind("@")
        if at >= 0:
            userinfo, host = rest[:at], rest[at:]
            user, colon, _password = userinfo.partition(":")
            rest = f"{user}:***{host}" if colon else rest
        text = head + sep + rest
    return _PASSWORD_PARAM.sub(r"\1***", text)
