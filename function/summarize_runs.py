"""Print the wall time of every stage of a study (from each run folder's run.json) and where its report is.

    python function/summarize_runs.py runs/demo
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from function.cli import Parser, UserError, run


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="folder holding the study's run folders (searched recursively)")
    return p


def stage_times(root: Path) -> list[tuple[str, str, float]]:
    """(folder relative to root, stage, wall seconds) of every run.json under ``root``, in time order."""
    rows = []
    for path in sorted(root.rglob("run.json"), key=lambda p: p.stat().st_mtime):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rows.append((str(path.parent.relative_to(root)) or ".", str(data.get("stage", "?")),
                     float(data.get("wall_time_s", float("nan")))))
    return rows


def main(args: argparse.Namespace) -> None:
    if not args.root.is_dir():
        raise UserError(f"{args.root} is not a directory")
    rows = stage_times(args.root)
    width = max([len(r[0]) for r in rows] + [6])
    print(f"{'folder':<{width}}  {'stage':<16} {'wall s':>8}")
    for folder, stage, seconds in rows:
        print(f"{folder:<{width}}  {stage:<16} {seconds:8.1f}")
    print(f"{'total':<{width}}  {'':<16} {sum(r[2] for r in rows):8.1f}")
    for report in sorted(args.root.rglob("report.md")):
        print(f"report: {report}")


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
