"""What a user installs: the wheel built from this tree, installed into a fresh virtualenv (not editable),
run outside the checkout — `cortex-server serve --demo` starts its node and `cortex call local echo` answers.

An editable install hides packaging bugs (a data file that is not package data is still found in the
checkout), so this test never lets the checkout onto `sys.path`: the commands run from a temp dir with a
clean environment. The venv sees the machine's site-packages for the third-party dependencies (it would
otherwise download them), but `cortex`'s own packages come only from the wheel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import venv
from pathlib import Path

import pytest

from tests.support.procs import REPO

pytestmark = pytest.mark.timeout(300)


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORTEX_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(tmp / "home"), CORTEX_SERVER_HOME=str(tmp / "data"), PYTHONUNBUFFERED="1")
    return env


def test_wheel_installs_and_serves_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # Build from a copy: an in-tree build leaves build/lib behind, whose stale files hide packaging bugs.
    tree = tmp_path / "src"
    shutil.copytree(
        REPO, tree, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".*_cache")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(wheels),
            str(tree),
        ],
        check=True,
        cwd=tmp_path,
        timeout=180,
    )
    (wheel,) = wheels.glob("cortex-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    bin_dir = env_dir / "bin"
    (tmp_path / "home").mkdir()
    env = _clean_env(tmp_path)
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
        cwd=tmp_path,
        env=env,
        timeout=180,
    )
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import spec, server; print(spec.__file__); print(server.__file__)"],
        check=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert str(REPO) not in where and str(env_dir) in where, where
    version = subprocess.run(
        [str(bin_dir / "cortex-agent"), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and re.fullmatch(r"cortex-agent \d+\.\d+\.\d+\S*\n", version.stdout)

    server = subprocess.Popen(
        [
            str(bin_dir / "cortex-server"),
            "serve",
            "--demo",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    listening = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            lines.append(line)
            if m := re.search(r"cortex-server listening on (\S+)", line):
                url.append(m.group(1))
                listening.set()
        listening.set()  # the server exited: stop waiting

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    try:
        assert listening.wait(60) and url, "".join(lines)
        call: subprocess.CompletedProcess[str] | None = None
        # The demo node needs a moment to connect: `cortex call` exits 4 until it has (bounded: 60 tries).
        for _ in range(60):
            call = subprocess.run(
                [
                    str(bin_dir / "cortex"),
                    "--server",
                    url[0],
                    "call",
                    "local",
                    "echo",
                    '{"text":"from the wheel"}',
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if call.returncode != 4:
                break
            threading.Event().wait(0.5)
        assert call is not None and call.returncode == 0, (call and call.stderr, "".join(lines))
        assert call.stdout.strip() == "from the wheel"
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        pumping.join(10)  # the pipe is at EOF once the server is gone
        if server.stdout is not None:
            server.stdout.close()
    assert not any("Traceback" in line for line in lines), "".join(lines)
