"""Artifacts are served so that a node's bytes never run as a page in the server's origin.

Tier (b): the real app under Starlette's TestClient; artifacts are put in the app's own store the way
the MCP surface does it. A node labels its artifact; the label is not trusted (spec/security.md
"Artifacts").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from server import admin
from server.app import build_app
from server.config import ServerConfig


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_app(ServerConfig(data_dir=tmp_path / "srv"))) as test_client:
        token = admin.issue_token(tmp_path / "srv", "alice", "ws1", "member", 600)
        test_client.headers["Authorization"] = f"Bearer {token}"
        yield test_client


def _put(client: TestClient, data: bytes, mime: str) -> str:
    store = client.app.state.cortex.artifacts  # type: ignore[attr-defined]
    return store.put(data, mime, node="n1", workspace="ws1")


@pytest.mark.parametrize("mime", ["image/png", "image/jpeg", "image/gif", "image/webp", "IMAGE/PNG"])
def test_images_are_inline_with_nosniff(client: TestClient, mime: str) -> None:
    artifact_id = _put(client, b"\x89PNG\r\n\x1a\n....", mime)
    response = client.get(f"/api/v1/artifacts/{artifact_id}")
    assert response.status_code == 200
    assert response.headers["content-type"] == mime.lower()
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "content-disposition" not in response.headers
    assert response.content == b"\x89PNG\r\n\x1a\n...."


@pytest.mark.parametrize(
    "mime",
    ["text/html", "text/html; charset=utf-8", "image/svg+xml", "application/javascript", "text/plain", ""],
)
def test_anything_else_is_an_opaque_attachment(client: TestClient, mime: str) -> None:
    page = b"<html><script>fetch('/api/v1/nodes')</script></html>"
    artifact_id = _put(client, page, mime)
    response = client.get(f"/api/v1/artifacts/{artifact_id}")
    assert response.status_code == 200
    # The node's label is never echoed: a browser must neither render nor sniff it.
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in response.headers["content-security-policy"]
    assert response.content == page
