"""Print the wall time of every stage of a study (from each run folder's run.json) and where its reports are;
with ``--report`` also write one combined report of every metrics run below the folder.

    python function/summarize_runs.py runs/demo
    python function/summarize_runs.py runs/study --report runs/study/report.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdq.function.io.atomic import write_text
from kdq.function.cli import Parser, UserError, run
from kdq.function.metrics.report import HEADER


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="folder holding the study's run folders (searched recursively)")
    p.add_argument("--report", type=Path, default=None,
                   help="also write one markdown report here: the hypotheses tables of every metrics run below "
                        "ROOT (one row per run, layer and metric) and the stage wall times")
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


def metrics_tables(root: Path) -> list[tuple[str, list[dict]]]:
    """(folder relative to root, table rows) of every ``metrics.json`` under ``root``."""
    tables = []
    for path in sorted(root.rglob("metrics.json")):
        try:
            table = json.loads(path.read_text()).get("table", [])
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} cannot be read ({exc})") from None
        tables.append((str(path.parent.relative_to(root)), table))
    return tables


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def combined_report(root: Path, times: list[tuple[str, str, float]]) -> str:
    lines = [f"# Combined report: {root}", "",
             "Every metrics run below this folder; differences are distil − label with their bootstrap interval "
             "(each run's own report.md explains the metrics and shows the figures).", "",
             markdown_row(["run"] + HEADER), markdown_row(["---"] * (len(HEADER) + 1))]
    for folder, table in metrics_tables(root):
        for row in table:
            lines.append(markdown_row([folder] + [str(row.get(h, "")) for h in HEADER]))
    lines += ["", "Reports: " + ", ".join(f"[{f}]({f}/report.md)" for f, _ in metrics_tables(root)), "",
              "## Wall time per stage", "", markdown_row(["folder", "stage", "wall s"]),
              markdown_row(["---", "---", "---:"])]
    lines += [markdown_row([f, st, f"{sec:.1f}"]) for f, st, sec in times]
    lines.append(markdown_row(["total", "", f"{sum(t[2] for t in times):.1f}"]))
    return "\n".join(lines) + "\n"


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
        if args.report is None or report.resolve() != args.report.resolve():
            print(f"report: {report}")
    if args.report is not None:
        if not metrics_tables(args.root):
            raise UserError(f"--report: no metrics.json below {args.root} to combine")
        write_text(args.report, combined_report(args.root, rows))
        print(f"combined report: {args.report}")


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
