"""The one entry point of the benchmark suite: ``python3 -m bench [--quick] [--json FILE]``.

Where it sits: outside the product; ``make bench`` / ``make bench-quick`` run it. It runs first
`bench.agent_bench` (the headline rows: the real `cortex-agent` with its state on tmpfs and on the data
dir's real file system, whose measured fsync cost heads the table, beside the relay), then
`bench.roundtrip` (echo, fs_read, screenshot), `bench.scale` (connection storm, idle nodes held) and
every other ``bench/*_bench.py`` module that exposes ``main(quick) -> list[dict]`` (rows with
``scenario, ours, reference, unit``), then prints one table: our figure, the reference measured in the
same run, and the ratio. ``--quick`` is a run of about a minute with smaller N.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import agent_bench, roundtrip, scale
from bench.harness import Row, raise_fd_limit

__all__ = ["EXTRA_MODULES", "collect_extra", "format_table", "main"]

EXTRA_MODULES = (
    "handshake_bench",
    "auth_bench",
    "audit_bench",
    "browser_bench",
    "mcp_bench",
    "cancel_bench",
    "hostile_bench",
    "race_bench",
    "redos_bench",
    "results_bench",
    "process_bench",
    "cluster_bench",
    "cluster_scale_bench",
    "store_bench",
    "feed_bench",
)


def _row_from_dict(d: dict[str, Any]) -> Row:
    return Row(
        str(d.get("scenario", "?")),
        d.get("ours"),
        d.get("reference"),
        str(d.get("unit", "")),
        higher_is_better=bool(d.get("higher_is_better", True)),
        note=str(d.get("note", "")),
        target=str(d.get("target", "")),
    )


def collect_extra(
    quick: bool, names: tuple[str, ...] = EXTRA_MODULES
) -> tuple[list[Row], list[str], set[str]]:
    """Rows of the other helpers' bench modules; returns (rows, notes about skipped ones, modules run)."""
    rows: list[Row] = []
    notes: list[str] = []
    ran: set[str] = set()
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                notes.append(f"bench/{name}.py: not present, skipped")
            else:
                notes.append(f"bench/{name}.py: import failed ({exc}), skipped")
            continue
        except Exception as exc:
            notes.append(f"bench/{name}.py: import failed ({type(exc).__name__}: {exc}), skipped")
            continue
        entry = getattr(module, "main", None)
        params = list(inspect.signature(entry).parameters) if callable(entry) else []
        if not params or params[0] != "quick":
            notes.append(f"bench/{name}.py: has no main(quick) -> list[dict], skipped")
            continue
        assert entry is not None
        try:
            result = entry(quick)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
        except Exception as exc:
            notes.append(f"bench/{name}.py: failed ({type(exc).__name__}: {exc})")
            continue
        if not isinstance(result, list):
            notes.append(
                f"bench/{name}.py: main(quick) returned {type(result).__name__}, not a list; skipped"
            )
            continue
        rows += [_row_from_dict(d) for d in result if isinstance(d, dict)]
        ran.add(name)
    return rows, notes, ran


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"


def format_table(rows: list[Row]) -> str:
    header = ("scenario", "ours", "reference", "ratio", "unit", "target / note")
    lines = [header]
    for row in rows:
        ratio = row.ratio
        extra = " · ".join(x for x in (row.target, row.note) if x)
        lines.append(
            (
                row.scenario,
                _fmt(row.ours),
                _fmt(row.reference),
                "n/a" if ratio is None else f"{ratio:.2f}x",
                row.unit,
                extra,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    out = []
    for i, line in enumerate(lines):
        cells = (
            [line[0].ljust(widths[0])]
            + [line[c].rjust(widths[c]) for c in (1, 2, 3)]
            + [line[4].ljust(widths[4])]
        )
        out.append("  ".join(cells) + "  " + line[5])
        if i == 0:
            out.append("-" * (sum(widths) + 2 * 5 + len(header[5])))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run of about a minute, smaller N")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--only",
        choices=["agent", "roundtrip", "scale", "extra"],
        action="append",
        help="run only these parts",
    )
    args = parser.parse_args(argv)
    parts = set(args.only or ["agent", "roundtrip", "scale", "extra"])
    raise_fd_limit()
    started = time.monotonic()
    rows: list[Row] = []
    notes: list[str] = []
    header: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cortex-bench-") as tmp:
        workdir = Path(tmp)
        if "agent" in parts:  # the headline rows, while the machine is as quiet as it will be
            agent_rows, header = asyncio.run(agent_bench.run(args.quick, workdir))
            rows += agent_rows
        if "roundtrip" in parts:
            rows += asyncio.run(roundtrip.run(args.quick, workdir))
        extra_rows: list[Row] = []
        ran: set[str] = set()
        if "extra" in parts:
            extra_rows, notes, ran = collect_extra(args.quick)
        if "scale" in parts:
            # bench/handshake_bench.py, when present, measures the storm; otherwise scale does its own.
            rows += asyncio.run(scale.run(args.quick, workdir, storm="handshake_bench" not in ran))
        rows += extra_rows
    print(f"\nCortex benchmarks ({'quick' if args.quick else 'full'}, {os.cpu_count()} cores, "
          f"{time.monotonic() - started:.0f} s); ratio = ours / reference")  # fmt: skip
    for line in header:
        print(f"  {line}")
    print()
    print(format_table(rows))
    for note in notes:
        print(f"  note: {note}")
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
