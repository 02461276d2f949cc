"""How many of the paper's predicted directions hold, one seed at a time and across seeds.

    python bench/seed_study.py --pooled runs/metrics_seeds/metrics.json --single runs/seed0/m/metrics.json \\
        runs/seed1/m/metrics.json runs/seed2/m/metrics.json

Reads metrics.json files of the metrics stage (sigma/find_knowledge_new.py): ``--pooled`` one report over several
training runs per net (its intervals are the two-level bootstrap), ``--single`` one report per seed (intervals over
images only).  Prints, per layer and predicted metric, each seed's difference and verdict and the pooled one, then
the counts: point estimates with the predicted sign, and verdicts *supported* / *opposite, significant*.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PREDICTED = ("N_fg", "N_bg", "lambda", "D_mean", "D_std", "rho")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pooled", type=Path, required=True, help="metrics.json over several runs per net")
    p.add_argument("--single", type=Path, nargs="+", required=True, help="metrics.json of one seed each")
    return p


def rows(path: Path) -> dict[tuple[str, str], dict]:
    """(layer, metric) → the metric's row of a metrics.json."""
    layers = json.loads(Path(path).read_text())["layers"]
    return {(layer, key): row for layer, data in layers.items() for key, row in data["metrics"].items()
            if key in PREDICTED}


def sign_holds(row: dict) -> bool:
    return bool(row.get("holds"))


def short(row: dict) -> str:
    if row.get("no_verdict"):
        return "no verdict"
    return {"supported": "supported", "opposite, significant": "OPPOSITE"}.get(row.get("verdict"), "n.s.")


def main(args: argparse.Namespace) -> None:
    pooled, singles = rows(args.pooled), [rows(p) for p in args.single]
    header = ["layer", "metric"] + [f"seed run {i + 1}" for i in range(len(singles))] + ["pooled (two-level)"]
    print(" | ".join(header))
    for key in pooled:
        cells = [f"{s[key]['difference']:+.3g} {short(s[key])}" for s in singles if key in s]
        cells.append(f"{pooled[key]['difference']:+.3g} [{pooled[key]['difference_ci'][0]:.3g}, "
                     f"{pooled[key]['difference_ci'][1]:.3g}] {short(pooled[key])}")
        print(" | ".join([*key, *cells]))
    total = len(pooled)
    print(f"\n{total} predicted (layer, metric) pairs")
    for i, s in enumerate(singles):
        print(f"seed run {i + 1}: predicted sign {sum(map(sign_holds, s.values()))}/{total}, supported "
              f"{sum(short(r) == 'supported' for r in s.values())}, opposite significant "
              f"{sum(short(r) == 'OPPOSITE' for r in s.values())}")
    same = sum(all(sign_holds(s[k]) == sign_holds(singles[0][k]) for s in singles) for k in pooled)
    every = sum(all(sign_holds(s[k]) for s in singles) for k in pooled)
    print(f"the same sign in every seed: {same}/{total}; the predicted sign in every seed: {every}/{total}")
    print(f"pooled: predicted sign {sum(map(sign_holds, pooled.values()))}/{total}, supported "
          f"{sum(short(r) == 'supported' for r in pooled.values())}, opposite significant "
          f"{sum(short(r) == 'OPPOSITE' for r in pooled.values())}, no verdict "
          f"{sum(short(r) == 'no verdict' for r in pooled.values())}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
