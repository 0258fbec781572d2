"""Local engine benchmark: audit appends per second (fsync each) and what shell_exec adds to a subprocess.

Where it sits: outside the product, beside the other benchmarks; `python3 -m bench` picks it up through
``main(quick) -> list[dict]``, and ``python3 -m bench.audit_bench [--quick]`` prints its own table.
Every figure has a reference measured in the same run on the same disk:

- `AuditLog.append` (JSON + hash chain + write + fsync in a thread) vs a bare ``os.write`` + ``os.fsync``
  loop of lines of the same size;
- the same appends with 64 in flight (group commit: every waiting record in one write + fsync);
- `shell_exec` with ``true`` (environment, process group, pipes, progress, result) vs a bare
  ``asyncio.create_subprocess_exec("/bin/sh", "-c", "true")``; and the full `ToolEngine.call`
  (schema check + two fsync'd audit records around it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from desktop_agent.audit import AuditLog
from desktop_agent.engine import ToolEngine
from desktop_agent.policy import Policy
from desktop_agent.tools.base import ToolContext
from desktop_agent.tools.shell import shell_exec

__all__ = ["main", "run"]

ROUNDS = 3
ARGS = {"command": "git status --short", "cwd": "/home/user/project", "env": {"LANG": "C"}}


async def _audit_rate(path: Path, n: int, in_flight: int) -> float:
    log = AuditLog(path)
    await log.open()
    started = time.perf_counter()
    if in_flight == 1:
        for i in range(n):
            await log.append("tool.requested", request_id=i, tool="shell_exec", arguments=ARGS)
    else:
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                await log.append("tool.requested", request_id=i, tool="shell_exec", arguments=ARGS)

        await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - started
    await log.aclose()
    return n / elapsed


def _raw_fsync_rate(path: Path, n: int, line: bytes) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(n):
            os.write(fd, line)
            os.fsync(fd)
        return n / (time.perf_counter() - started)
    finally:
        os.close(fd)


async def _ms_per_call(n: int, fn: Any) -> float:
    for _ in range(3):  # warm-up
        await fn()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _run(quick: bool) -> list[dict[str, Any]]:
    n_audit, n_shell = (100, 30) if quick else (600, 200)
    with tempfile.TemporaryDirectory(prefix="cortex-audit-bench-") as tmp:
        base = Path(tmp)
        await _audit_rate(base / "warm.log", 10, 1)
        line = (base / "warm.log").read_bytes().splitlines(keepends=True)[-1]
        # The disk's fsync rate drifts a lot on shared machines: interleave rounds and take medians.
        raws, seqs, concs = [], [], []
        for r in range(ROUNDS):
            raws.append(await asyncio.to_thread(_raw_fsync_rate, base / f"raw{r}.log", n_audit, line))
            seqs.append(await _audit_rate(base / f"seq{r}.log", n_audit, 1))
            concs.append(await _audit_rate(base / f"conc{r}.log", n_audit, 64))
        raw, ours_seq, ours_conc = (statistics.median(x) for x in (raws, seqs, concs))

        root = base / "root"
        root.mkdir()
        ctx = ToolContext(request_id=1, caller={}, home=base, policy=Policy(allowed_roots=(root,)))

        async def bare() -> None:
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "true")
            await proc.wait()

        async def tool() -> None:
            await shell_exec({"command": "true"}, ctx)

        home = base / "home"
        home.mkdir()
        (home / "agent.toml").write_text(f'allowed_roots = ["{root}"]\n[browser]\nenabled = false\n')
        engine = ToolEngine(home)
        await engine.start()

        async def audited() -> None:
            await engine.call("shell_exec", {"command": "true"}, request_id=1, caller={"sub": "b", "ws": "b"})

        try:
            bare_ms = await _ms_per_call(n_shell, bare)
            tool_ms = await _ms_per_call(n_shell, tool)
            engine_ms = await _ms_per_call(n_shell, audited)
        finally:
            await engine.aclose()

    return [
        {"scenario": "audit append, fsync each (vs raw write+fsync)", "ours": ours_seq, "reference": raw,
         "unit": "records/s", "note": f"{len(line)} B lines"},
        {"scenario": "audit append, 64 in flight (vs raw write+fsync)", "ours": ours_conc, "reference": raw,
         "unit": "records/s", "note": "group commit: one fsync per batch"},
        {"scenario": "shell_exec `true` (vs bare asyncio subprocess)", "ours": tool_ms, "reference": bare_ms,
         "unit": "ms p50", "higher_is_better": False},
        {"scenario": "engine.call shell_exec `true`, audited", "ours": engine_ms, "reference": bare_ms,
         "unit": "ms p50", "higher_is_better": False, "note": "+2 fsync'd audit records"},
    ]  # fmt: skip


def main(quick: bool = False) -> list[dict[str, Any]]:
    """Rows (scenario, ours, reference, unit) for `python3 -m bench`; call it outside an event loop."""
    return asyncio.run(_run(quick))


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.audit_bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="3x100 appends and 30 calls instead of 3x600 and 200"
    )
    args = parser.parse_args(argv)
    rows = main(args.quick)
    print(f"{'scenario':<52} {'ours':>12} {'reference':>12}  unit")
    for row in rows:
        print(f"{row['scenario']:<52} {row['ours']:>12,.2f} {row['reference']:>12,.2f}  {row['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
