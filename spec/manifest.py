"""Loading the tool manifest (tools_manifest.json) and checking arguments against a tool's inputSchema."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

__all__ = ["argument_problem", "load_manifest", "manifest_path", "schema_validator"]


def manifest_path() -> Path:
    """tools_manifest.json at the repository root (a copy ships inside the spec package for installs)."""
    root = Path(__file__).resolve().parent.parent / "tools_manifest.json"
    if root.exists():
        return root
    return Path(str(resources.files("spec") / "tools_manifest.json"))


def load_manifest(path: Path | None = None) -> list[dict[str, Any]]:
    data = json.loads((path or manifest_path()).read_text(encoding="utf-8"))
    tools: list[dict[str, Any]] = data["tools"]
    return tools


def schema_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A compiled validator for one tool's inputSchema; build it once per tool, not per call."""
    return Draft202012Validator(schema)


def argument_problem(validator: Draft202012Validator, arguments: Any) -> str | None:
    """The schema's complaint about `arguments` (first error, with its path), or None when they fit."""
    error = next(iter(validator.iter_errors(arguments)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message
