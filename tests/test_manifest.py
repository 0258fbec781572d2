"""tools_manifest.json: complete per CONTRACT §5, valid against spec/schemas/tools_manifest.schema.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from desktop_agent.tools.basic import system_facts
from spec.manifest import load_manifest, manifest_path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "spec" / "schemas" / "tools_manifest.schema.json"

CONTRACT_REQUIRED = {
    "echo": {"text"},
    "system_info": set(),
    "shell_exec": {"command"},
    "fs_read": {"path"},
    "fs_write": {"path", "content"},
    "fs_edit": {"path", "old_text", "new_text"},
    "fs_list": {"path"},
    "fs_grep": {"pattern", "path"},
    "browser_navigate": {"url"},
    "browser_click": {"target"},
    "browser_type": {"target", "text"},
    "browser_screenshot": set(),
    "browser_snapshot": set(),
    "process_start": {"command"},
    "process_read": {"process_id"},
    "process_write": {"process_id", "input"},
    "process_kill": {"process_id"},
    "process_list": set(),
    "browser_tabs": {"action"},
    "browser_press_key": {"key"},
    "browser_wait_for": set(),
    "browser_file_upload": {"target", "paths"},
}
CONTRACT_OPTIONAL = {
    "shell_exec": {"cwd", "timeout_s", "env", "stdin"},
    "fs_read": {"offset", "limit"},
    "fs_write": {"encoding", "mode"},
    "fs_edit": {"expected_replacements"},
    "fs_list": {"recursive", "max_entries"},
    "fs_grep": {"glob", "ignore_case", "max_matches"},
    "browser_type": {"submit"},
    "browser_screenshot": {"full_page", "format", "quality", "max_width"},
    "process_start": {"cwd", "env", "pty", "name"},
    "process_read": {"offset", "wait_s", "max_bytes"},
    "process_write": {"close_stdin"},
    "process_kill": {"signal"},
    "browser_tabs": {"index", "url"},
    "browser_wait_for": {"text", "text_gone", "target", "timeout_s"},
}
STRUCTURED = {
    "system_info", "shell_exec", "fs_write", "fs_edit", "fs_list", "fs_grep", "browser_navigate",
    "process_start", "process_read", "process_write", "process_kill", "process_list", "browser_tabs",
}  # fmt: skip


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(manifest_path().read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def tools(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in manifest["tools"]}


def test_manifest_validates_against_its_schema(manifest: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    errors = list(Draft202012Validator(schema).iter_errors(manifest))
    assert errors == []


def test_schema_rejects_an_open_input_schema(manifest: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    broken = json.loads(json.dumps(manifest))
    broken["tools"][0]["inputSchema"]["additionalProperties"] = True
    assert list(Draft202012Validator(schema).iter_errors(broken))


def test_every_contract_tool_once_with_its_arguments(manifest: dict[str, Any], tools: dict[str, Any]) -> None:
    names = [t["name"] for t in manifest["tools"]]
    assert len(names) == len(set(names))
    assert set(names) == set(CONTRACT_REQUIRED)
    for name, spec in tools.items():
        schema = spec["inputSchema"]
        assert set(schema.get("required", [])) == CONTRACT_REQUIRED[name], name
        assert set(schema["properties"]) == CONTRACT_REQUIRED[name] | CONTRACT_OPTIONAL.get(name, set()), name
        assert schema["additionalProperties"] is False


def test_input_schemas_are_valid_and_defaults_fit(tools: dict[str, Any]) -> None:
    for name, spec in tools.items():
        Draft202012Validator.check_schema(spec["inputSchema"])
        for prop, sub in spec["inputSchema"]["properties"].items():
            if "default" in sub:
                assert Draft202012Validator(sub).is_valid(sub["default"]), (name, prop)
        if "outputSchema" in spec:
            Draft202012Validator.check_schema(spec["outputSchema"])


def test_documented_limits(tools: dict[str, Any]) -> None:
    timeout = tools["shell_exec"]["inputSchema"]["properties"]["timeout_s"]
    assert (timeout["default"], timeout["maximum"]) == (60, 3600)
    assert tools["fs_read"]["inputSchema"]["properties"]["limit"]["default"] == 1 << 20
    write = tools["fs_write"]["inputSchema"]["properties"]
    assert write["encoding"]["enum"] == ["utf-8", "base64"]
    assert write["mode"]["enum"] == ["overwrite", "append", "create"]
    assert tools["browser_screenshot"]["inputSchema"]["properties"]["format"]["enum"] == ["png", "jpeg"]
    validator = Draft202012Validator(tools["shell_exec"]["inputSchema"])
    assert not validator.is_valid({"command": "true", "timeout_s": 3601})
    assert not validator.is_valid({"command": "true", "bogus": 1})


def test_process_tool_limits(tools: dict[str, Any]) -> None:
    read = tools["process_read"]["inputSchema"]["properties"]
    assert (read["wait_s"]["default"], read["wait_s"]["maximum"], read["max_bytes"]["default"]) == (
        0,
        30,
        65536,
    )
    assert tools["process_kill"]["inputSchema"]["properties"]["signal"]["enum"] == ["INT", "TERM", "KILL"]
    assert tools["process_start"]["inputSchema"]["properties"]["pty"]["default"] is False
    tabs = tools["browser_tabs"]["inputSchema"]["properties"]["action"]["enum"]
    assert tabs == ["list", "new", "select", "close"]
    assert tools["browser_wait_for"]["inputSchema"]["properties"]["timeout_s"]["default"] == 10


def test_structured_tools_have_output_schemas(tools: dict[str, Any]) -> None:
    assert {n for n, t in tools.items() if "outputSchema" in t} == STRUCTURED
    assert Draft202012Validator(tools["system_info"]["outputSchema"]).is_valid(system_facts())


def test_annotations_mark_what_changes_the_machine(tools: dict[str, Any]) -> None:
    for name in ("fs_read", "fs_list", "fs_grep", "echo", "system_info"):
        assert tools[name]["annotations"]["readOnlyHint"] is True
    for name in ("shell_exec", "fs_write", "fs_edit"):
        assert tools[name]["annotations"]["readOnlyHint"] is False
        assert tools[name]["annotations"]["destructiveHint"] is True


def test_load_manifest_returns_the_tools() -> None:
    assert [t["name"] for t in load_manifest()][:2] == ["echo", "system_info"]
