"""Print the wall time of every stage of a study (from each run folder's run.json) and where its reports are;
with ``--report`` also write one combined report of every metrics run below the folder.

    python -m kdq.function.stages.summarize_runs runs/demo
    python -m kdq.function.stages.summarize_runs runs/study --report runs/study/report.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdq.function.io.atomic import write_text
from kdq.function.io.rundir import read_run_json
from kdq.function.cli import Parser, UserError, run
from kdq.function.metrics.report import HEADER

TITLE = "# Combined report: "  # the first line of every report this script writes
TIMES_HEADING = "## Wall time per stage"


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="folder holding the study's run folders (searched recursively)")
    p.add_argument("--report", type=Path, default=None,
                   help="also write one markdown report here: the hypotheses tables of every metrics run below "
                        "ROOT (one row per run, layer and metric) and the stage wall times")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --report file (only one this script wrote)")
    return p


def visible(path: Path, root: Path) -> bool:
    """Whether ``path`` lies below ``root`` outside hidden folders (a temporary copy, a run moved aside)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts[:-1])


def is_own_report(path: Path) -> bool:
    """Whether the file ``path`` is a combined report of this script (its title line and its wall-time table)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return text.startswith(TITLE) and f"\n{TIMES_HEADING}\n" in text


def check_report_target(report: Path, overwrite: bool) -> None:
    """Refuse a ``--report`` that would replace a file this script did not write, or one it wrote without
    ``--overwrite``."""
    if not (report.exists() or report.is_symlink()):
        return
    if not report.is_file():
        raise UserError(f"--report: {report} exists and is not a file; choose another --report")
    if not is_own_report(report):
        raise UserError(f"--report: {report} exists and is not a report summarize_runs wrote; choose another "
                        "--report (it is never replaced)")
    if not overwrite:
        raise UserError(f"--report: {report} already holds a combined report; pass --overwrite to replace it")


def stage_times(root: Path) -> list[tuple[str, str, float]]:
    """(folder relative to root, stage, wall seconds) of every run.json under ``root``, in time order."""
    rows = []
    for path in sorted((p for p in root.rglob("run.json") if visible(p, root)), key=lambda p: p.stat().st_mtime):
        data = read_run_json(path.parent)  # {} when it is not JSON; a field of the wrong type is one line
        if not data:
            continue
        wall = data.get("wall_time_s")
        rows.append((str(path.parent.relative_to(root)) or ".", str(data.get("stage", "?")),
                     float(wall) if wall is not None else float("nan")))
    return rows


def metrics_tables(root: Path) -> list[tuple[str, list[dict]]]:
    """(folder relative to root, table rows) of every ``metrics.json`` under ``root``."""
    tables = []
    for path in sorted(p for p in root.rglob("metrics.json") if visible(p, root)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} cannot be read ({exc})") from None
        table = data.get("table", []) if isinstance(data, dict) else None
        if not isinstance(table, list) or not all(isinstance(row, dict) for row in table):
            raise UserError(f"{path}: its table is not a list of rows; the file is damaged or not kdq's")
        tables.append((str(path.parent.relative_to(root)), table))
    return tables


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def combined_report(root: Path, times: list[tuple[str, str, float]]) -> str:
    lines = [f"{TITLE}{root}", "",
             "Every metrics run below this folder; differences are distil − label with their bootstrap interval "
             "(each run's own report.md explains the metrics and shows the figures).", "",
             markdown_row(["run"] + HEADER), markdown_row(["---"] * (len(HEADER) + 1))]
    for folder, table in metrics_tables(root):
        for row in table:
            lines.append(markdown_row([folder] + [str(row.get(h, "")) for h in HEADER]))
    lines += ["", "Reports: " + ", ".join(f"[{f}]({f}/report.md)" for f, _ in metrics_tables(root)), "",
              TIMES_HEADING, "", markdown_row(["folder", "stage", "wall s"]),
              markdown_row(["---", "---", "---:"])]
    lines += [markdown_row([f, st, f"{sec:.1f}"]) for f, st, sec in times]
    lines.append(markdown_row(["total", "", f"{sum(t[2] for t in times):.1f}"]))
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    if not args.root.is_dir():
        raise UserError(f"{args.root} is not a directory")
    if args.report is not None:
        check_report_target(args.report, args.overwrite)
    rows = stage_times(args.root)
    width = max([len(r[0]) for r in rows] + [6])
    print(f"{'folder':<{width}}  {'stage':<16} {'wall s':>8}")
    for folder, stage, seconds in rows:
        print(f"{folder:<{width}}  {stage:<16} {seconds:8.1f}")
    print(f"{'total':<{width}}  {'':<16} {sum(r[2] for r in rows):8.1f}")
    for report in sorted(p for p in args.root.rglob("report.md") if visible(p, args.root)):
        if args.report is None or report.resolve() != args.report.resolve():
            print(f"report: {report}")
    if args.report is not None:
        if not metrics_tables(args.root):
            raise UserError(f"--report: no metrics.json below {args.root} to combine")
        write_text(args.report, combined_report(args.root, rows))
        print(f"combined report: {args.report}")


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
