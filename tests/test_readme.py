"""The README's Python example runs as written (issue 16): it is taken from the README, not copied here."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def readme_example() -> str:
    """The first ``python`` code block of the README's "The Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's 'The Python API' section"
    return match.group(1)


def test_the_example_is_at_most_20_lines():
    code = readme_example()
    assert len(code.strip().splitlines()) <= 20, len(code.strip().splitlines())


def test_the_example_runs_as_written(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared test machine: one thread per process
    (tmp_path / "example.py").write_text(readme_example())
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for metric in ("N_fg", "N_bg", "lambda", "D_mean", "D_std", "rho"):
        assert re.search(rf"^(?:\S+\s+)?{metric}\s", done.stdout, re.M), done.stdout  # (no layer column)
    report = tmp_path / "kdq_report" / "report.md"
    assert report.is_file() and "## How to read this" in report.read_text()
    assert len(list((tmp_path / "kdq_report" / "figures").glob("*.png"))) >= 3


def modality_examples() -> list[str]:
    """The two ``python`` blocks of the README's "Tokens and point clouds" section (tokens, then points)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Tokens and point clouds"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2, f"{len(blocks)} python blocks in the README's 'Tokens and point clouds' section"
    return blocks


def run_example(tmp_path, code: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_token_example_runs_as_written(tmp_path):
    out = run_example(tmp_path, modality_examples()[0])
    values = re.findall(r"-?\d+\.\d+|nan", out)
    assert len(values) == 12 and values[8:] == ["nan"] * 4, out  # one entropy per token, NaN on the 4 padded ones


def test_the_point_example_runs_as_written(tmp_path):
    out = run_example(tmp_path, modality_examples()[1])
    for metric in ("N_fg", "N_bg", "lambda", "D_mean", "D_std", "rho"):
        assert re.search(rf"^{metric}\s", out, re.M), out
    assert "no verdict: only 3 images" in out  # three clouds carry no verdict
