"""File tools: confinement to the allowed roots, atomic and serialised writes, bounded reads, search."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.policy import Limits, Policy
from desktop_agent.tools.base import ToolContext, ToolFailure, ToolResult
from desktop_agent.tools.fs import FsTools

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class Fs:
    def __init__(self, tmp: Path, openat2: bool = True) -> None:
        self.tmp = tmp
        self.root = tmp / "a"  # `ab` next to it shares the prefix but is outside
        self.sibling = tmp / "ab"
        self.home = self.root / ".cortex"
        for d in (self.root, self.sibling, self.home):
            d.mkdir(parents=True)
        (self.sibling / "secret.txt").write_text("sibling secret")
        self.policy = Policy(allowed_roots=(self.root.resolve(),), limits=Limits(max_read_bytes=4 << 20))
        self.tools = FsTools(openat2=openat2).tools()

    async def __call__(self, name: str, **arguments: Any) -> ToolResult:
        ctx = ToolContext(request_id=1, caller={}, home=self.home, policy=self.policy)
        return await self.tools[name](arguments, ctx)

    async def refused(self, name: str, **arguments: Any) -> str:
        with pytest.raises(ToolFailure) as info:
            await self(name, **arguments)
        return str(info.value)


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def fs(tmp_path: Path, request: pytest.FixtureRequest) -> Fs:
    return Fs(tmp_path, openat2=request.param)  # "walk": confinement's fallback without openat2


def text_of(result: ToolResult) -> str:
    return str(result.content[0]["text"])


# -- confinement -------------------------------------------------------------------------------------
@pytest.mark.parametrize("tool", ["fs_read", "fs_list", "fs_write", "fs_edit", "fs_grep"])
@pytest.mark.parametrize(
    "where", ["../ab/secret.txt", "ABS_SIBLING", "/etc/passwd", "sub/../../ab/secret.txt"]
)
async def test_paths_outside_the_roots_are_refused(fs: Fs, tool: str, where: str) -> None:
    path = str(fs.sibling / "secret.txt") if where == "ABS_SIBLING" else where
    args: dict[str, Any] = {"path": path}
    if tool == "fs_write":
        args["content"] = "x"
    if tool == "fs_edit":
        args.update(old_text="sibling", new_text="x")
    if tool == "fs_grep":
        args["pattern"] = "secret"
    message = await fs.refused(tool, **args)
    assert "outside the allowed roots" in message
    assert (fs.sibling / "secret.txt").read_text() == "sibling secret"


async def test_symlink_out_of_a_root_is_refused(fs: Fs) -> None:
    (fs.root / "escape").symlink_to(fs.sibling / "secret.txt")
    (fs.root / "escape_dir").symlink_to(fs.sibling)
    assert "outside" in await fs.refused("fs_read", path="escape")
    assert "outside" in await fs.refused("fs_read", path="escape_dir/secret.txt")
    assert "outside" in await fs.refused("fs_write", path="escape", content="pwned")
    assert (fs.sibling / "secret.txt").read_text() == "sibling secret"


async def test_symlink_inside_a_root_and_relative_paths_work(fs: Fs) -> None:
    (fs.root / "real.txt").write_text("inside")
    (fs.root / "link.txt").symlink_to(fs.root / "real.txt")
    assert text_of(await fs("fs_read", path="link.txt")) == "inside"
    assert text_of(await fs("fs_read", path=str(fs.root / "real.txt"))) == "inside"


async def test_agent_files_cannot_be_written_or_credentials_read(fs: Fs) -> None:
    for name in ("agent.toml", "credentials.json", "audit.log"):
        (fs.home / name).write_text("original")
        assert "cannot be" in await fs.refused("fs_write", path=str(fs.home / name), content="x")
        assert "cannot be" in await fs.refused(
            "fs_edit", path=str(fs.home / name), old_text="orig", new_text="x"
        )
        assert (fs.home / name).read_text() == "original"
    os.link(fs.home / "audit.log", fs.root / "hardlink.log")
    assert "cannot be" in await fs.refused("fs_write", path="hardlink.log", content="x", mode="append")
    assert "cannot be" in await fs.refused("fs_read", path=".cortex/credentials.json")
    grep = await fs("fs_grep", pattern="original", path=".")
    assert grep.structured and all("credentials" not in m["path"] for m in grep.structured["matches"])
    assert "cannot be" in await fs.refused("fs_read", path=".cortex/agent.toml")


# -- fs_write ----------------------------------------------------------------------------------------
async def test_write_modes(fs: Fs) -> None:
    result = await fs("fs_write", path="new.txt", content="héllo")
    assert result.structured == {"path": str(fs.root / "new.txt"), "bytes_written": 6}
    await fs("fs_write", path="new.txt", content=" world", mode="append")
    assert (fs.root / "new.txt").read_text() == "héllo world"
    assert "already exists" in await fs.refused("fs_write", path="new.txt", content="x", mode="create")
    await fs("fs_write", path="img.png", content=base64.b64encode(PNG).decode(), encoding="base64")
    assert (fs.root / "img.png").read_bytes() == PNG
    assert "base64" in await fs.refused("fs_write", path="bad.bin", content="@@@", encoding="base64")
    assert "parent directory" in await fs.refused("fs_write", path="nodir/x.txt", content="x")


async def test_overwrite_is_atomic_and_keeps_permissions(fs: Fs) -> None:
    target = fs.root / "script.sh"
    target.write_text("old")
    target.chmod(0o750)
    before = target.stat().st_ino
    await fs("fs_write", path="script.sh", content="new")
    assert target.read_text() == "new" and target.stat().st_ino != before  # replaced, not rewritten
    assert target.stat().st_mode & 0o777 == 0o750
    assert [p.name for p in fs.root.iterdir() if "cortex-tmp" in p.name] == []


async def test_write_to_a_read_only_file_is_refused(fs: Fs) -> None:
    target = fs.root / "ro.txt"
    target.write_text("keep")
    target.chmod(0o444)
    for mode in ("overwrite", "append"):
        assert "read-only" in await fs.refused("fs_write", path="ro.txt", content="x", mode=mode)
    assert "read-only" in await fs.refused("fs_edit", path="ro.txt", old_text="keep", new_text="x")
    assert target.read_text() == "keep"


async def test_write_limit(fs: Fs) -> None:
    fs.policy = Policy(allowed_roots=fs.policy.allowed_roots, limits=Limits(max_write_bytes=10))
    assert "write limit" in await fs.refused("fs_write", path="big.txt", content="x" * 11)


async def test_concurrent_writes_never_interleave(fs: Fs) -> None:
    lines = [f"{i:04d}" + "x" * 20000 + "\n" for i in range(40)]
    await asyncio.gather(*(fs("fs_write", path="log.txt", content=line, mode="append") for line in lines))
    assert sorted((fs.root / "log.txt").read_text().splitlines(keepends=True)) == sorted(lines)
    bodies = ["A" * 100000, "B" * 100000, "C" * 100000]
    await asyncio.gather(*(fs("fs_write", path="one.txt", content=b) for b in bodies))
    assert (fs.root / "one.txt").read_text() in bodies


# -- fs_edit -----------------------------------------------------------------------------------------
async def test_edit_requires_the_exact_count(fs: Fs) -> None:
    target = fs.root / "code.py"
    target.write_text("x = 1\ny = 1\n")
    message = await fs.refused("fs_edit", path="code.py", old_text="= 1", new_text="= 2")
    assert "found 2" in message and "expected 1" in message
    assert target.read_text() == "x = 1\ny = 1\n"
    assert "found 0" in await fs.refused("fs_edit", path="code.py", old_text="zzz", new_text="q")
    result = await fs("fs_edit", path="code.py", old_text="= 1", new_text="= 2", expected_replacements=2)
    assert result.structured == {"path": str(target), "replacements": 2}
    assert target.read_text() == "x = 2\ny = 2\n"
    await fs("fs_edit", path="code.py", old_text="x = 2\n", new_text="")
    assert target.read_text() == "y = 2\n"


async def test_edit_refuses_binary_and_missing_files(fs: Fs) -> None:
    (fs.root / "bin").write_bytes(b"\xff\xfe\x00abc")
    assert "UTF-8" in await fs.refused("fs_edit", path="bin", old_text="abc", new_text="x")
    assert "no such file" in await fs.refused("fs_edit", path="nope.txt", old_text="a", new_text="b")


# -- fs_read -----------------------------------------------------------------------------------------
async def test_read_text_with_offset_and_limit(fs: Fs) -> None:
    (fs.root / "t.txt").write_text("0123456789")
    assert [c["text"] for c in (await fs("fs_read", path="t.txt")).content] == ["0123456789"]
    sliced = await fs("fs_read", path="t.txt", offset=2, limit=3)
    assert sliced.content[0]["text"] == "234" and "offset=5" in sliced.content[1]["text"]
    past = await fs("fs_read", path="t.txt", offset=50)
    assert past.content[0]["text"] == "" and "past the end" in past.content[1]["text"]
    # An offset no file offset can hold (the schema has no maximum) is past the end too, not a crash of
    # the tool (os.pread raised OverflowError; found by a schema-driven fuzz of the tools' arguments).
    huge = await fs("fs_read", path="t.txt", offset=10**30, limit=1)
    assert not huge.is_error and "past the end" in huge.content[1]["text"]


async def test_read_does_not_split_a_character(fs: Fs) -> None:
    (fs.root / "u.txt").write_text("aé")  # é is 2 bytes
    result = await fs("fs_read", path="u.txt", limit=2)
    assert result.content[0]["text"] == "a" and "offset=1" in result.content[1]["text"]


async def test_invalid_utf8_comes_back_as_base64(fs: Fs) -> None:
    raw = b"caf\xe9 latin-1 \xff"
    (fs.root / "latin.txt").write_bytes(raw)
    item = (await fs("fs_read", path="latin.txt")).content[0]
    assert item["type"] == "resource" and item["resource"]["mimeType"] == "text/plain"
    assert base64.b64decode(item["resource"]["blob"]) == raw


async def test_images_come_back_as_image_content(fs: Fs) -> None:
    (fs.root / "pic.bin").write_bytes(PNG)
    item = (await fs("fs_read", path="pic.bin")).content[0]
    assert item == {"type": "image", "data": base64.b64encode(PNG).decode(), "mimeType": "image/png"}


async def test_five_gigabyte_file_gives_a_bounded_slice_or_a_clear_error(fs: Fs) -> None:
    big = fs.root / "huge.bin"
    big.touch()
    os.truncate(big, 5 << 30)  # sparse
    result = await fs("fs_read", path="huge.bin")
    item = result.content[0]
    assert len(base64.b64decode(item["resource"]["blob"])) == 1 << 20
    assert f"of {5 << 30}" in result.content[1]["text"]
    message = await fs.refused("fs_read", path="huge.bin", limit=5 << 30)
    assert "read limit" in message


async def test_read_errors(fs: Fs) -> None:
    assert "no such file" in await fs.refused("fs_read", path="missing.txt")
    assert "directory" in await fs.refused("fs_read", path=".")
    os.symlink("/dev/null", fs.root / "device")
    assert "outside" in await fs.refused("fs_read", path="device")


async def test_a_named_pipe_is_read_as_a_stream_and_a_cancel_ends_the_wait(fs: Fs) -> None:
    os.mkfifo(fs.root / "fifo")

    def write() -> None:
        with open(fs.root / "fifo", "w") as f:
            f.write("from the pipe")

    reading = asyncio.ensure_future(fs("fs_read", path="fifo"))
    async with asyncio.timeout(10):
        await asyncio.to_thread(write)
        assert (await reading).content[0]["text"] == "from the pipe"
    # nobody ever writes: the read waits, and a cancel ends it
    waiting = asyncio.ensure_future(fs("fs_read", path="fifo"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    waiting.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await waiting


# -- fs_list -----------------------------------------------------------------------------------------
async def test_list_flat_recursive_and_bounded(fs: Fs) -> None:
    (fs.root / "d" / "e").mkdir(parents=True)
    (fs.root / "d" / "e" / "deep.txt").write_text("123")
    (fs.root / "f.txt").write_text("12345")
    (fs.root / "out").symlink_to(fs.sibling)
    flat = await fs("fs_list", path=".")
    assert flat.structured
    entries = {e["name"]: e for e in flat.structured["entries"]}
    assert set(entries) == {".cortex", "d", "f.txt", "out"}
    assert (entries["f.txt"]["type"], entries["f.txt"]["size"]) == ("file", 5)
    assert entries["d"]["type"] == "directory" and entries["out"]["type"] == "symlink"
    assert entries["f.txt"]["mtime"].endswith("Z")
    deep = await fs("fs_list", path=".", recursive=True)
    assert deep.structured
    names = [e["name"] for e in deep.structured["entries"]]
    assert "d/e/deep.txt" in names and not any(n.startswith("out/") for n in names)
    assert names.index("d") < names.index("d/e") < names.index("d/e/deep.txt") < names.index("f.txt")
    few = await fs("fs_list", path=".", recursive=True, max_entries=2)
    assert few.structured and len(few.structured["entries"]) == 2 and few.structured["truncated"]
    assert "not a directory" in await fs.refused("fs_list", path="f.txt")


# -- fs_grep -----------------------------------------------------------------------------------------
async def test_grep(fs: Fs) -> None:
    (fs.root / "src").mkdir()
    (fs.root / "src" / "a.py").write_text("import os\nTODO: one\nx = 1\n")
    (fs.root / "src" / "b.txt").write_text("todo: two\n")
    (fs.root / "src" / "c.bin").write_bytes(b"TODO\x00binary")
    (fs.root / ".git").mkdir()
    (fs.root / ".git" / "HEAD").write_text("TODO in git\n")
    result = await fs("fs_grep", pattern="TODO", path=".")
    assert result.structured
    assert result.structured["matches"] == [
        {"path": str(fs.root / "src" / "a.py"), "line": 2, "text": "TODO: one"}
    ]
    both = await fs("fs_grep", pattern="todo", path="src", ignore_case=True)
    assert both.structured and [m["line"] for m in both.structured["matches"]] == [2, 1]
    only_txt = await fs("fs_grep", pattern="todo", path="src", ignore_case=True, glob="*.txt")
    assert only_txt.structured and [m["path"] for m in only_txt.structured["matches"]] == [
        str(fs.root / "src/b.txt")
    ]
    capped = await fs("fs_grep", pattern=".", path="src/a.py", max_matches=2)
    assert capped.structured and len(capped.structured["matches"]) == 2 and capped.structured["truncated"]
    assert "regular expression" in await fs.refused("fs_grep", pattern="(", path=".")
