"""Confinement under races and by identity (issue 13): swap races, hard links, the agent's own files,
`protected_paths`, and the public `access_refusal` the browser's file:// guard uses. Every test runs with
openat2 and with the forced O_NOFOLLOW walk."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bench.race_bench import race
from desktop_agent.confine import Openat2, access_refusal, stat_refusal
from desktop_agent.policy import Policy, load_config
from desktop_agent.tools.base import ToolContext, ToolFailure, ToolResult
from desktop_agent.tools.fs import FsTools


class Node:
    """A root with the agent home inside it (the default layout: root `~`, home `~/.cortex`)."""

    def __init__(self, tmp: Path, openat2: bool, protected: tuple[Path, ...] = ()) -> None:
        (tmp / "root").mkdir()
        self.root = (tmp / "root").resolve()
        self.outside = tmp / "outside"
        self.home = self.root / ".cortex"
        self.outside.mkdir()
        self.home.mkdir()
        (self.outside / "secret.txt").write_text("outside secret")
        (self.home / "credentials.json").write_text('{"credential": "node-credential-xyz"}')
        (self.home / "agent.toml").write_text("max_concurrency = 4\n")
        (self.home / "audit.log").write_text("")
        self.protected = protected
        self.fs = FsTools(openat2=openat2)
        self.openat2 = openat2

    def policy(self, protected: tuple[Path, ...] = ()) -> Policy:
        return Policy(allowed_roots=(self.root,), protected_paths=protected or self.protected)

    async def __call__(self, name: str, **arguments: Any) -> ToolResult:
        ctx = ToolContext(request_id=1, caller={}, home=self.home, policy=self.policy())
        return await self.fs.tools()[name](arguments, ctx)

    async def refused(self, name: str, **arguments: Any) -> str:
        with pytest.raises(ToolFailure) as info:
            await self(name, **arguments)
        return str(info.value)


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    n = Node(tmp_path, request.param)
    yield n
    n.fs.close()


def test_openat2_is_used_where_the_kernel_has_it_and_can_be_forced_off() -> None:
    if not Openat2().available:
        pytest.skip("this kernel has no openat2")
    assert FsTools().uses_openat2 and not FsTools(openat2=False).uses_openat2


# -- races ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
async def test_swap_race_never_escapes(tmp_path: Path, openat2: bool) -> None:
    result = await race(tmp_path, 60, 60, openat2=openat2)
    assert result.swaps >= 200  # the swapper really raced the calls
    assert result.reads_ok > 0  # and the tools kept working inside the root meanwhile
    assert (result.read_escapes, result.write_escapes) == (0, 0)


_HOME_SWAPPER = textwrap.dedent(
    """
    import ctypes, sys
    a, b = sys.argv[1].encode(), sys.argv[2].encode()
    libc = ctypes.CDLL(None, use_errno=True)
    print("ready", flush=True)
    while libc.renameat2(-100, a, -100, b, 2) == 0:
        pass
    """
)


async def test_a_race_cannot_create_or_replace_agent_toml(node: Node) -> None:
    """`root/x` keeps being swapped between a plain directory and a symlink to the agent home."""
    (node.home / "agent.toml").unlink()  # absent: creating it would set a policy
    (node.root / "x").mkdir()
    (node.root / "x.link").symlink_to(node.home)
    cmd = [sys.executable, "-c", _HOME_SWAPPER, str(node.root / "x"), str(node.root / "x.link")]
    swapper = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    try:
        assert swapper.stdout is not None
        async with asyncio.timeout(10):
            assert await swapper.stdout.readline() == b"ready\n"
        written = 0
        modes = ("overwrite", "create", "append")
        # 180 tries at least; on a loaded machine the swapper may win every one of them, so go on
        # (bounded) until one write has landed in the plain directory.
        for attempt in range(1200):
            if attempt >= 180 and written:
                break
            try:
                name = ("agent.toml", "credentials.json")[attempt % 2]
                await node(
                    "fs_write", path=f"x/{name}", content="pwned = true\n", mode=modes[attempt // 2 % 3]
                )
                written += 1
            except ToolFailure:
                pass
        assert swapper.returncode is None  # still swapping all along
    finally:
        swapper.kill()
        async with asyncio.timeout(5):
            await swapper.wait()
    assert written > 0  # writes into the plain directory went through
    assert not (node.home / "agent.toml").exists()
    assert "node-credential-xyz" in (node.home / "credentials.json").read_text()


# -- hard links and the agent's own files -----------------------------------------------------------
async def test_hard_links_to_the_credential_are_never_read(node: Node) -> None:
    os.link(node.home / "credentials.json", node.root / "innocent.txt")
    assert "cannot be used" in await node.refused("fs_read", path="innocent.txt")
    assert "cannot be used" in await node.refused("fs_grep", pattern="credential", path="innocent.txt")
    grep = await node("fs_grep", pattern="node-credential", path=".")
    assert grep.structured is not None and grep.structured["matches"] == []
    assert "node-credential" not in str(grep.content)
    listing = await node("fs_list", path=".", recursive=True)
    assert "node-credential" not in str(listing.content) + str(listing.structured)


async def test_symlinks_to_the_agent_files_are_refused_for_every_tool(node: Node) -> None:
    (node.root / "cfg").symlink_to(node.home / "agent.toml")
    (node.root / "h").symlink_to(node.home)
    for path in ("cfg", "h/agent.toml", ".cortex/credentials.json", ".cortex/audit.log"):
        assert "cannot be used" in await node.refused("fs_read", path=path)
        assert "cannot be used" in await node.refused("fs_write", path=path, content="x = 1\n")
        assert "cannot be used" in await node.refused("fs_edit", path=path, old_text="4", new_text="99")
    assert "cannot be used" in await node.refused("fs_write", path="h/agent.toml", content="x", mode="create")
    assert (node.home / "agent.toml").read_text() == "max_concurrency = 4\n"


async def test_creating_agent_toml_in_the_home_is_refused(node: Node) -> None:
    (node.home / "agent.toml").unlink()
    for mode in ("overwrite", "create", "append"):
        assert "cannot be used" in await node.refused(
            "fs_write", path=".cortex/agent.toml", content="shell.enabled = true\n", mode=mode
        )
    assert not (node.home / "agent.toml").exists()


async def test_nothing_is_written_through_a_file_with_several_links(node: Node) -> None:
    os.link(node.outside / "secret.txt", node.root / "shared.txt")
    for mode in ("overwrite", "append"):
        assert "hard links" in await node.refused("fs_write", path="shared.txt", content="x", mode=mode)
    assert "hard links" in await node.refused("fs_edit", path="shared.txt", old_text="outside", new_text="x")
    assert (node.outside / "secret.txt").read_text() == "outside secret"
    assert (await node("fs_read", path="shared.txt")).content[0]["text"] == "outside secret"  # reads are fine


async def test_symlinks_inside_the_root_work_absolute_and_relative(node: Node) -> None:
    (node.root / "d").mkdir()
    (node.root / "d" / "f.txt").write_text("in d")
    (node.root / "abs").symlink_to(node.root / "d")  # absolute target: openat2 says EXDEV, the walk resolves
    (node.root / "rel").symlink_to("d")
    (node.root / "up").symlink_to("../outside/secret.txt")
    (node.root / "d" / "back").symlink_to("../d/f.txt")
    for path in ("abs/f.txt", "rel/f.txt", "d/back", "abs/../d/f.txt"):
        assert (await node("fs_read", path=path)).content[0]["text"] == "in d", path
    await node("fs_write", path="abs/new.txt", content="via abs")
    await node("fs_write", path="d/back", content="through the link")
    assert (node.root / "d" / "new.txt").read_text() == "via abs"
    assert (node.root / "d" / "f.txt").read_text() == "through the link" and (
        node.root / "d" / "back"
    ).is_symlink()
    for path in ("up", "d/../../outside/secret.txt"):
        assert "outside" in await node.refused("fs_read", path=path)
        assert "outside" in await node.refused("fs_write", path=path, content="x")
    assert (node.outside / "secret.txt").read_text() == "outside secret"


# -- protected_paths --------------------------------------------------------------------------------
async def test_protected_paths_are_refused_to_every_file_tool(tmp_path: Path) -> None:
    n = Node(tmp_path, True)
    data = n.root / "server-data"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "signing.pem").write_text("SIGNING-KEY-MATERIAL")
    os.link(data / "keys" / "signing.pem", n.root / "copy.pem")
    n.protected = (data,)
    try:
        for path in ("server-data", "server-data/keys", "server-data/keys/signing.pem", "copy.pem"):
            assert "protected" in await n.refused("fs_read", path=path) or path.count("/") < 2
            assert "protected" in await n.refused("fs_grep", pattern="SIGNING", path=path)
        assert "protected" in await n.refused("fs_list", path="server-data")
        assert "protected" in await n.refused("fs_write", path="server-data/keys/new.pem", content="x")
        grep = await n("fs_grep", pattern="SIGNING", path=".")
        assert grep.structured is not None and grep.structured["matches"] == []
        listing = await n("fs_list", path=".", recursive=True)
        assert listing.structured is not None
        names = {e["name"] for e in listing.structured["entries"]}
        assert "server-data" in names and not any(x.startswith("server-data/") for x in names)
    finally:
        n.fs.close()


def test_protected_paths_come_from_agent_toml(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(f'protected_paths = ["{tmp_path / "srv"}", "~/x"]\n')
    policy = load_config(tmp_path).policy
    assert policy.protected_paths == (tmp_path / "srv", Path(os.path.realpath(Path.home() / "x")))


# -- the browser's question -------------------------------------------------------------------------
@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
def test_access_refusal_answers_for_the_browser(tmp_path: Path, openat2: bool) -> None:
    n = Node(tmp_path, openat2)
    opener = Openat2(enabled=openat2)
    (n.root / "page.html").write_text("<p>hi</p>")
    os.link(n.home / "credentials.json", n.root / "hard.html")
    (n.root / "soft.html").symlink_to(n.home / "credentials.json")
    (n.root / "vault").mkdir()

    def ask(path: Path | str, protected: tuple[Path, ...] = ()) -> str | None:
        return access_refusal(path, (n.root,), n.home, protected, opener)

    assert ask(n.root / "page.html") is None
    assert ask(n.root / "missing.html") is None
    for bad in (
        n.home / "credentials.json",
        n.root / "hard.html",
        n.root / "soft.html",
        n.home / "agent.toml",
    ):
        assert "agent's own files" in (ask(bad) or "")
    assert "outside" in (ask(n.outside / "secret.txt") or "")
    assert "protected" in (ask(n.root / "vault", (n.root / "vault",)) or "")
    hard = n.root / "hard.html"
    assert "agent's own files" in (stat_refusal(os.stat(hard), str(hard), n.home) or "")
    assert stat_refusal(os.stat(n.root / "page.html"), str(n.root / "page.html"), n.home) is None
    n.fs.close()


async def test_a_path_naming_the_root_through_an_outside_symlink_works(node: Node) -> None:
    (node.root / "doc.txt").write_text("in the root")
    (node.outside / "to-root").symlink_to(node.root)
    assert (await node("fs_read", path=str(node.outside / "to-root" / "doc.txt"))).content[0][
        "text"
    ] == "in the root"
    assert "outside" in await node.refused("fs_read", path=str(node.outside / "secret.txt"))
