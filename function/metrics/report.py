"""What the metrics stage writes: ``metrics.json``, ``metrics.csv``, ``report.md`` and the terminal table.

One :class:`LayerResult` per analysed layer; a run over ``--layer all`` gives one table over the layers.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdq.function.io.atomic import finite_or_none, write_json, write_text
from kdq.function.metrics.measures import ALL_METRICS, METRICS, Comparison, PerImage

LABELS = {m.key: m.label for m in ALL_METRICS}
ARROWS = {"distil > label": "↑", "distil < label": "↓"}
CAPTIONS = {
    "entropy_maps": "Entropy maps H = log σ* + ½log 2πe over the checkpoints; for each image the label net is "
                    "above the distil net, one colour scale, mask outline in yellow, a red dot on each visual "
                    "concept (H more than b below the background mean H̄_bg).",
    "concept_curves": "Mean number of visual concepts per image on the foreground (N_fg) and the background "
                      "(N_bg) at each checkpoint, with the bootstrap interval of the mean as a band.",
    "weight_distance": "Cumulative weight distance D(e) of the layer's analysed weight; circles/squares mark m̂ "
                       "(the checkpoint where N_fg first peaks), area ∝ number of images; dashed: D_mean.",
    "metric_panels": "The six metrics for both nets with bootstrap intervals; each title gives the difference "
                     "distil − label with its interval and the verdict on the predicted direction.",
}
FIGURE_ORDER = tuple(CAPTIONS)


@dataclass
class LayerResult:
    layer: str | None  # None: maps of no named layer (kdq.compare without layer=): no layer in titles and rows
    names: dict[str, list[str]]  # net → the images it was measured on, in order
    epochs: dict[str, list[int]]  # net → its checkpoint epochs
    epochs_source: dict[str, str]
    grid: int
    image_size: int
    inputs: dict[str, str]  # flag → path
    counts: dict[str, int]
    skipped: dict[str, str]  # image → why
    mask_fallback: list[str]
    mhat_skips_epoch0: bool
    compat: str  # "kdq" or "original"
    foreground: dict[str, Any]
    comparison: Comparison
    accuracy: dict[str, float | None] = field(default_factory=dict)  # net → its final val top-1 (%), if recorded
    warnings: list[str] = field(default_factory=list)  # what makes the comparison degenerate
    figures: dict[str, str] = field(default_factory=dict)  # figure key → path relative to the output folder
    notes: list[str] = field(default_factory=list)
    figure_data: dict[str, Any] = field(default_factory=dict, repr=False)  # arrays the figures need
    not_paper: list[str] = field(default_factory=list)  # settings of the runs behind the table that are not the paper's
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # net → each training run (sigma, run, seed)
    run_names: dict[str, list[list[str]]] = field(default_factory=dict)  # net → the images of each of its runs

    def names_of(self, net: str, run: int) -> list[str]:
        """The images run ``run`` (0-based) of ``net`` was measured on."""
        return self.run_names[net][run] if self.run_names.get(net) else self.names[net]


def layer_tag(res: LayerResult, template: str = "**{}**: ") -> str:
    """``template`` filled with the result's layer, or ``""`` for a result of no named layer (``kdq.compare``
    without ``layer=``), so that no title or line carries a made-up layer name."""
    return "" if res.layer is None else template.format(res.layer)


def has_layers(results: list[LayerResult]) -> bool:
    """Whether the tables carry a layer column (not for a single result of no named layer)."""
    return any(res.layer is not None for res in results)


# ---- numbers as text ------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    v = float(v)
    if np.isnan(v):
        return "nan"
    return f"{v:.{digits}g}"


def fmt_diff(row: dict) -> tuple[str, str]:
    lo, hi = row["difference_ci"]
    if not np.isfinite(row["difference"]):
        return fmt(row["difference"]), "[-]"
    return f"{row['difference']:+.4g}", f"[{fmt(lo)}, {fmt(hi)}]"


def verdict_text(row: dict) -> str:
    """The verdict, or why there is none (``no verdict: …``); ``-`` for a metric without a prediction."""
    if row.get("no_verdict"):
        return f"no verdict: {row['no_verdict']}"
    return row["verdict"] or "-"


def predicted_text(predicted: str | None, none: str = "-") -> str:
    """A prediction with its arrow (``distil > label (↑)``); ``none`` where there is none."""
    return f"{predicted} ({ARROWS[predicted]})" if predicted else none


def table_rows(results: list[LayerResult], secondary: bool = True) -> list[list[str]]:
    keys = [m.key for m in (ALL_METRICS if secondary else METRICS)]
    out = []
    for res in results:
        for row in res.comparison.rows:
            if row["metric"] not in keys:
                continue
            diff, ci = fmt_diff(row)
            out.append([res.layer, row["metric"], fmt(row["label"]), fmt(row["distil"]), diff, ci,
                        row["predicted"] or "-", verdict_text(row)])
    return out


HEADER = ["layer", "metric", "label", "distil", "distil-label", "95% CI", "predicted", "verdict"]


def terminal_table(results: list[LayerResult], level: float) -> str:
    """The hypotheses table with aligned columns (plain ASCII)."""
    header = HEADER[:5] + [f"{level:.0%} CI"] + HEADER[6:]
    rows = [header] + table_rows(results)
    if not has_layers(results):
        rows = [row[1:] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = {2, 3, 4} if has_layers(results) else {1, 2, 3}

    def line(r):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), sep] + [line(r).rstrip() for r in rows[1:]])


# ---- files ---------------------------------------------------------------------------------------

def per_image_dict(p: PerImage, epochs: list[int], names: list[str]) -> dict[str, list]:
    return {"names": names, "n_fg": p.n_fg.tolist(), "n_bg": p.n_bg.tolist(), "lambda": p.fg_ratio.tolist(),
            "mhat_index": p.mhat.tolist(), "mhat_epoch": [epochs[i] for i in p.mhat], "D": p.D.tolist(),
            "slope": p.slope.tolist(), "mhat_bg_index": p.mhat_bg.tolist(),
            "mhat_bg_epoch": [epochs[i] for i in p.mhat_bg], "D_bg": p.D_bg.tolist(), "slope_bg": p.slope_bg.tolist(),
            "rho": p.rho.tolist(), "rho_bg": p.rho_bg.tolist(), "rho_total": p.rho_total.tolist()}


def bootstrap_method(c: Comparison) -> str:
    """What the intervals cover, in words (metrics.json and report.md)."""
    runs = c.n_runs
    if not c.paired and max(runs.values()) == 1:
        return ("unpaired (each net's images resampled on their own) percentile bootstrap over images; every "
                "replicate recomputes the baseline, the concepts, m̂ and all metrics")
    if not c.paired and max(runs.values()) > 1:
        return (f"two-level percentile bootstrap, nested: each replicate resamples the training runs within each net "
                f"(label {runs['label']}, distil {runs['distil']}), then each drawn run's own images (the runs' "
                "effective images differ), recomputes every metric per drawn run and averages over the drawn runs; "
                "the intervals cover training randomness and image sampling")
    if max(runs.values()) == 1:
        return ("paired percentile bootstrap over images (one training run per net: the intervals cover image "
                "sampling only, not training randomness); every replicate recomputes the baseline, the concepts, "
                "m̂ and all metrics")
    return (f"two-level percentile bootstrap: each replicate resamples the training runs within each net "
            f"(label {runs['label']}, distil {runs['distil']}) and the images (one draw shared by every run), "
            "recomputes every metric per drawn run and averages over the drawn runs; the intervals cover training "
            "randomness and image sampling")


def layer_json(res: LayerResult) -> dict[str, Any]:
    c = res.comparison
    return {
        "layer": res.layer,
        "inputs": res.inputs,
        "compat": res.compat,
        "checkpoints": res.epochs,
        "checkpoints_source": res.epochs_source,
        "grid": res.grid,
        "image_size": res.image_size,
        "mhat_skips_epoch0": res.mhat_skips_epoch0,
        "foreground": res.foreground,
        "images": {**res.counts, "skipped_images": res.skipped, "central_square_masks": res.mask_fallback},
        "metrics": {row["metric"]: {k: v for k, v in row.items() if k != "metric"} for row in c.rows},
        "summary": c.summary,
        "bootstrap": {"resamples": c.n_boot, "seed": c.seed, "level": c.level, "paired": c.paired,
                      "training_runs": c.n_runs, "method": bootstrap_method(c)},
        "training_runs": res.runs,
        "not_paper_settings": res.not_paper,
        "per_run_summary": c.run_summaries,
        "curves": {net: {"epochs": res.epochs[net], "baseline": getattr(c, net).baseline.tolist(), **c.curves[net]}
                   for net in c.curves},
        "per_image": {net: per_image_dict(getattr(c, net), res.epochs[net], res.names[net]) for net in c.curves},
        "per_image_runs": {net: [per_image_dict(p, res.epochs[net], res.names_of(net, r))
                                 for r, p in enumerate(c.runs[net])]
                           for net in c.runs} if max(c.n_runs.values()) > 1 else None,
        "figures": res.figures,
        "notes": res.notes,
    }


def csv_rows(res: LayerResult, net: str, run: int, p: PerImage) -> list[list]:
    """One row per image of one training run of one net (metrics.csv)."""
    epochs = res.epochs[net]
    return [[res.layer, net, run, name, int(p.n_fg[i, -1]), int(p.n_bg[i, -1]), repr(float(p.fg_ratio[i])),
             int(p.mhat[i]), epochs[int(p.mhat[i])], repr(float(p.D[i])), repr(float(p.rho[i])),
             repr(float(p.rho_bg[i])), repr(float(p.rho_total[i])), repr(float(p.slope[i])), int(p.mhat_bg[i]),
             epochs[int(p.mhat_bg[i])], repr(float(p.D_bg[i])), repr(float(p.slope_bg[i]))]
            for i, name in enumerate(res.names_of(net, run - 1))]


def metrics_csv(results: list[LayerResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["layer", "net", "run", "image", "N_fg", "N_bg", "lambda", "mhat_index", "mhat_epoch", "D", "rho",
                "rho_bg", "rho_total", "slope", "mhat_bg_index", "mhat_bg_epoch", "D_bg", "slope_bg"])
    for res in results:
        for net in ("label", "distil"):
            for r, p in enumerate(res.comparison.runs[net]):
                w.writerows(csv_rows(res, net, r + 1, p))
    return buf.getvalue()


def plural(count, noun: str) -> str:
    """``1 image``, ``3 images``, ``15/14 images`` (a count may be text)."""
    return f"{count} {noun}" if str(count) == "1" else f"{count} {noun}s"


HOW_TO_READ = """\
Each net's σ maps (docs/method.md §2) say how much of each image cell a layer of the net discards: a cell whose
entropy H is low is kept. A cell is a *visual concept* at a checkpoint when its entropy lies more than b below
H̄_bg, the mean background entropy over the images at that checkpoint. The paper's three hypotheses compare the net
distilled from the teacher (*distil*) with the same architecture trained on labels (*label*): a distil net learns
more concepts and more of them on the object (H1), learns them together and fast — its weights travel less far
before the foreground concepts peak (H2) — and keeps them stably (H3). *supported*: the whole bootstrap interval of
distil − label lies on the predicted side of 0; *same sign, not significant*: the point estimate does, the interval
includes 0; *opposite …*: the estimate goes the other way. Rows without a prediction are reported for reference.
There is *no verdict* where the data cannot carry one: fewer than 10 images, a metric fixed by the checkpoint
schedule (m̂ with a single checkpoint to pick), an estimate that is not a number, or resamples that all give the
same difference (a zero-width interval). With one training run per net an interval covers image sampling only; with
several (each trained with another --seed) it covers training randomness too (a two-level bootstrap).
"""


def settings_section(results: list[LayerResult]) -> list[str]:
    """The report's first section: every setting behind the table that is not the paper's (none: one line)."""
    items = not_paper_items(results)
    if not items:
        return ["## Settings that are not the paper's", "", "None: every recorded setting is the paper's.", ""]
    return ["## Settings that are not the paper's", "",
            "The runs behind this table differ from the paper's setting in these ways; read every verdict below "
            "with them in mind.", "", *[f"- {cell(item)}" for item in items], ""]


def not_paper_items(results: list[LayerResult]) -> list[str]:
    """Every layer's settings that are not the paper's, each once; one that holds for some layers only names them."""
    items = list(dict.fromkeys(item for res in results for item in res.not_paper))
    if len(results) < 2:
        return items
    out = []
    for item in items:
        layers = [res.layer for res in results if item in res.not_paper]
        out.append(item if len(layers) == len(results) else f"{item} ({', '.join(layers)} only)")
    return out


def per_run_section(results: list[LayerResult]) -> list[str]:
    """With several training runs per net: each run's value beside the pooled one, and the spread between runs."""
    several = [res for res in results if max(res.comparison.n_runs.values()) > 1]
    if not several:
        return []
    lines = ["", "## Per training run", "",
             "Each run's value (run 1, 2, … in the order given, with its --seed), the pooled value (the mean over a "
             "net's runs) and the spread between runs (standard deviation, ddof 1).", ""]
    for res in several:
        seeds = {net: ", ".join(f"run {i + 1}: seed {r.get('seed')}" + (f", {r['images']} images" if "images" in r
                                                                           else "")
                                for i, r in enumerate(res.runs.get(net, [])))
                 for net in ("label", "distil")}
        lines += [f"{layer_tag(res, '**{}** — ')}label net ({seeds['label']}); distil net ({seeds['distil']}).", "",
                  "| metric | label runs | label pooled (spread) | distil runs | distil pooled (spread) |",
                  "| --- | --- | ---: | --- | ---: |"]
        for row in res.comparison.rows:
            if "per_run" not in row:
                continue
            runs = {net: " / ".join(fmt(v) for v in row["per_run"][net]) for net in ("label", "distil")}
            spread = {net: fmt(row["spread"][net]) for net in ("label", "distil")}
            lines.append(f"| {LABELS[row['metric']]} | {runs['label']} | {fmt(row['label'])} ({spread['label']}) | "
                         f"{runs['distil']} | {fmt(row['distil'])} ({spread['distil']}) |")
        lines.append("")
    return lines


def cell(text: str) -> str:
    """``text`` safe inside a markdown table cell (``|S_last|`` would end the cell)."""
    return text.replace("|", "\\|")


def markdown(results: list[LayerResult], settings: dict[str, Any], level: float) -> str:
    pct = f"{level:.0%}"
    at = layer_tag(results[0], " at {}") if len(results) == 1 else f" at {', '.join(res.layer for res in results)}"
    lines = [f"# Label net vs distil net{at}: the three hypotheses", ""]
    lines += settings_section(results)
    lines += ["## How to read this", "", HOW_TO_READ, "| metric | what it measures | the paper predicts |", "| --- | --- | --- |"]
    lines += [f"| {m.label} | {cell(m.what)} | {predicted_text(m.predicted, '—')} |" for m in ALL_METRICS]
    warnings = [f"- {layer_tag(res)}{w}" for res in results for w in res.warnings]
    if warnings:
        lines += ["", "## Warnings", "", *warnings]
    column = ("| layer ", "| --- ") if has_layers(results) else ("", "")
    lines += ["", "## Results", "",
              f"{column[0]}| metric | label | distil | distil − label [{pct} CI] | predicted | verdict |",
              f"{column[1]}| --- | ---: | ---: | --- | --- | --- |"]
    for res in results:
        for row in res.comparison.rows:
            diff, ci = fmt_diff(row)
            lines.append(f"{layer_tag(res, '| {} ')}| {LABELS[row['metric']]} | {fmt(row['label'])} | "
                         f"{fmt(row['distil'])} | "
                         f"{diff} {ci} | {predicted_text(row['predicted'])} | {verdict_text(row)} |")
    lines += per_run_section(results)
    lines += ["", "## The nets", ""]
    for res in results:
        acc = ", ".join(f"{net} net {fmt(res.accuracy.get(net))} %" if res.accuracy.get(net) is not None
                        else f"{net} net not recorded" for net in ("label", "distil"))
        lines.append(f"- {layer_tag(res)}final validation top-1: {acc}.")
    lines += ["", "## Images and settings", ""]
    for res in results:
        c = res.counts
        skipped = f", {c['skipped']} left out for NaN/inf/σ* ≤ 0" if res.skipped else ""
        used = (plural(c["used_label"], "image") + " used" if c["used_label"] == c["used_distil"] else
                f"{plural(c['used_label'], 'image')} used for the label net, {c['used_distil']} for the distil net")
        schedules = (f"checkpoints {' '.join(map(str, res.epochs['label']))} ({res.epochs_source['label']})"
                     if res.epochs["label"] == res.epochs["distil"] else
                     "checkpoints: label " + " ".join(map(str, res.epochs["label"])) + f" ({res.epochs_source['label']}),"
                     " distil " + " ".join(map(str, res.epochs["distil"])) + f" ({res.epochs_source['distil']})")
        per_run = c.get("effective_per_run") or {}
        effective = {net: "/".join(map(str, per_run.get(net) or [c[f"{net}_effective"]])) for net in ("label", "distil")}
        if max(len(v) for v in per_run.values() or [[0]]) > 1:
            runs = {net: "/".join(str(len(res.names_of(net, r))) for r in range(len(per_run[net])))
                    for net in ("label", "distil")}
            used = f"images used per run: label {runs['label']}, distil {runs['distil']}"
            common = f"{c['both']} distinct images effective in some run"
        else:
            common = f"{c['both']} effective in both runs"
        lines.append(f"- {layer_tag(res)}{used} ({common}{skipped}; "
                     f"label run{'s' if '/' in effective['label'] else ''} {effective['label']}, distil "
                     f"run{'s' if '/' in effective['distil'] else ''} {effective['distil']} effective); "
                     f"{schedules}; grid {res.grid}×{res.grid}; S = {res.image_size}; "
                     f"m̂ {'skips' if res.mhat_skips_epoch0 else 'includes'} epoch 0; foreground: "
                     f"{res.foreground.get('foreground')} ({'exact' if res.foreground.get('exact_masks') else 'bilinear'} "
                     f"masks).")
    modes = {res.compat for res in results}
    mode = ("the original code's arithmetic (--compat original: D read one checkpoint before m̂ when epoch 0 is "
            "left out, per-net image filter, inf slopes kept)" if modes == {"original"} else
            "kdq's (the original's off-by-one and per-net image filter corrected; see docs/original-code.md, "
            "Differences from the original code)")
    methods = list(dict.fromkeys(bootstrap_method(res.comparison) for res in results))
    lines += [f"- Computed with {mode}.",
              f"- b = {settings['b']}; {pct} intervals from a {'; '.join(methods)}; {settings['bootstrap']} "
              f"resamples, seed {settings['seed']}; differences are distil − label.", "", "## Figures", ""]
    n = 0
    if not any(res.figures for res in results):
        lines += ["(not drawn: --no-figures)", ""]
    for res in results:
        for key in FIGURE_ORDER:
            if key in res.figures:
                n += 1
                lines += [f"![{key}{layer_tag(res, ' {}')}]({res.figures[key]})", "",
                          f"*Figure {n}{layer_tag(res, ' ({})')}.* {CAPTIONS[key]}", ""]
    notes = [f"- {layer_tag(res, '{}: ')}{note}" for res in results for note in res.notes]
    if notes:
        lines += ["## Notes", ""] + notes + [""]
    lines += ["## Inputs", ""]
    for res in results:
        for flag, path in res.inputs.items():
            lines.append(f"- {layer_tag(res, '{} ')}`{flag}`: `{path}`")
    lines.append("")
    return "\n".join(lines)




def write_outputs(out: Path, results: list[LayerResult], settings: dict[str, Any], provenance: dict[str, Any],
                  level: float) -> None:
    """``metrics.json`` (everything), ``metrics.csv`` (image × net), ``report.md``; each written atomically."""
    write_json(out / "metrics.json", finite_or_none({
        **provenance, "settings": settings,
        "not_paper_settings": not_paper_items(results),
        "table": [dict(zip(HEADER, r)) for r in table_rows(results)],
        "layers": {res.layer or "": layer_json(res) for res in results}}))
    write_text(out / "metrics.csv", metrics_csv(results))
    write_text(out / "report.md", markdown(results, settings, level))
