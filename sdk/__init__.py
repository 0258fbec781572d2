"""Cortex Python SDK: script tasks against agent nodes through a Cortex server.

from sdk import Client
with Client("http://127.0.0.1:8765", token=T) as c:
    print(c.call("laptop", "echo", {"text": "hi"}).text)
"""

from sdk.client import AsyncClient, CallHandle, CallResult, Client, Image
from sdk.exceptions import (
    AuthError,
    CallCancelled,
    CallTimeout,
    ConnectionLost,
    CortexError,
    InvalidArguments,
    NodeDisconnected,
    NodeNotFound,
    Overloaded,
)

__all__ = [
    "AsyncClient",
    "AuthError",
    "CallCancelled",
    "CallHandle",
    "CallResult",
    "CallTimeout",
    "Client",
    "ConnectionLost",
    "CortexError",
    "Image",
    "InvalidArguments",
    "NodeDisconnected",
    "NodeNotFound",
    "Overloaded",
]
