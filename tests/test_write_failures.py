"""A disk that fills up (or turns read-only) in the middle of a stage (issue 10).

Every result file is written under a temporary name and renamed into place, so the failure is simulated at
that rename: the k-th ``os.replace``/``os.rename`` of the run raises ``OSError(ENOSPC)`` (or ``EROFS``).
The stage must stop with one error line and exit status 2, leave no temporary file, keep every file that
was already final intact, and a rerun with ``--resume`` must finish with the same results as a run that
never failed.  (A real read-only folder cannot be tested here: the tests may run as root, which ignores
permission bits.)
"""
from __future__ import annotations

import errno
import os

import pytest

from tests.helpers import run_script
from tests.test_faults import assert_complete, temp_leftovers, visible_files

TRAIN = ("train_net/train_net.py", "--arch", "vgg_tiny", "--split", "train", "--val-split", "val", "--epochs", 3,
         "--checkpoints", 0, 1, 2, 3, "--batch-size", 4, "--lr", 0.02, "--device", "cpu")
SIGMA = ("sigma/train_sigma.py", "--arch", "vgg_tiny", "--layer", "fc1", "--split", "train", "--pic-num", 4,
         "--effect-num", 4, "--samples", 2, "--steps", 3, "--break-steps", 1, "--grid", 4, "--effective-rule",
         "off", "--batch-images", 2, "--no-progress", "--device", "cpu")
METRICS = ("sigma/find_knowledge_new.py", "--split", "train", "--layer", "fc1", "--bootstrap", 20)


class FailingDisk:
    """Counts renames into place; the ``fail_at``-th (1-based) raises ``OSError(code)`` — and, when
    ``persistent``, every later one too (a disk that stays full)."""

    def __init__(self, monkeypatch, fail_at: int | None, code: int = errno.ENOSPC, persistent: bool = False):
        self.count, self.fail_at, self.code, self.persistent = 0, fail_at, code, persistent
        for name in ("replace", "rename"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(real))

    def _wrap(self, real):
        def renamed(src, dst, *args, **kwargs):
            self.count += 1
            if self.fail_at is not None and (self.count == self.fail_at or
                                             self.persistent and self.count > self.fail_at):
                raise OSError(self.code, os.strerror(self.code), str(dst))
            return real(src, dst, *args, **kwargs)
        return renamed


def run(script_and_args, *extra) -> int:
    script, *argv = script_and_args
    return run_script(script, *argv, *extra)


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if " error: " in line]
    assert len(lines) == 1, lines
    return lines[0]


def check_stopped_cleanly(out, ref, final_pattern, capsys, code):
    line = error_line(capsys)
    assert os.strerror(code) in line, line
    assert not temp_leftovers(out), temp_leftovers(out)
    ref_files = visible_files(ref)
    for rel, path in visible_files(out).items():
        assert_complete(path)
        if final_pattern(rel):
            assert path.read_bytes() == ref_files[rel].read_bytes(), rel


@pytest.fixture(scope="module")
def label_run(tiny_data, tmp_path_factory):
    ref = tmp_path_factory.mktemp("write_failures") / "label"
    assert run(TRAIN, "--data", tiny_data, "--out", ref) == 0
    return ref


def count_writes(monkeypatch, command) -> int:
    with monkeypatch.context() as m:
        disk = FailingDisk(m, fail_at=None)
        assert run(command) == 0
    return disk.count


@pytest.mark.parametrize("code,persistent", [(errno.ENOSPC, False), (errno.EROFS, False), (errno.ENOSPC, True)])
def test_training_stops_cleanly_and_resumes(label_run, tiny_data, tmp_path, monkeypatch, capsys, code, persistent):
    total = count_writes(monkeypatch, (*TRAIN, "--data", tiny_data, "--out", tmp_path / "count"))
    for k in sorted({1, total // 3, 2 * total // 3, total}):
        out = tmp_path / f"fail_{k}"
        with monkeypatch.context() as m:
            FailingDisk(m, fail_at=k, code=code, persistent=persistent)
            capsys.readouterr()
            assert run(TRAIN, "--data", tiny_data, "--out", out) == 2, k
        check_stopped_cleanly(out, label_run, lambda rel: rel[0].isdigit(), capsys, code)
        assert run(TRAIN, "--data", tiny_data, "--out", out, "--resume") == 0, k
        for e in (0, 1, 2, 3):
            assert (out / f"{e}.pth.tar").read_bytes() == (label_run / f"{e}.pth.tar").read_bytes(), (k, e)
        assert (out / "weight_diff.npy").read_bytes() == (label_run / "weight_diff.npy").read_bytes(), k


def test_sigma_stops_cleanly_and_resumes(label_run, tiny_data, tmp_path, monkeypatch, capsys):
    base = (*SIGMA, "--data", tiny_data, "--checkpoint_root", label_run)
    ref = tmp_path / "ref"
    total = count_writes(monkeypatch, (*base, "--out", ref))
    for k in sorted({2, total // 2, total - 1}):
        out = tmp_path / f"fail_{k}"
        with monkeypatch.context() as m:
            FailingDisk(m, fail_at=k)
            capsys.readouterr()
            assert run(base, "--out", out) == 2, k
        check_stopped_cleanly(out, ref, lambda rel: rel.startswith("img_"), capsys, errno.ENOSPC)
        assert run(base, "--out", out, "--resume") == 0, k
        for rel, path in visible_files(ref).items():
            if rel.startswith("img_") or rel.endswith("name_list.txt"):
                assert (out / rel).read_bytes() == path.read_bytes(), (k, rel)


def test_metrics_keep_the_previous_report(label_run, tiny_data, tmp_path, monkeypatch, capsys):
    sigma = tmp_path / "sigma"
    assert run(SIGMA, "--data", tiny_data, "--checkpoint_root", label_run, "--out", sigma) == 0
    base = (*METRICS, "--label-sigma", sigma, "--distil-sigma", sigma, "--label-run", label_run,
            "--distil-run", label_run, "--data", tiny_data)
    out = tmp_path / "metrics"
    assert run(base, "--out", out) == 0
    total = count_writes(monkeypatch, (*base, "--out", out, "--overwrite"))
    before = {rel: p.read_bytes() for rel, p in visible_files(out).items()}
    for k in (1, total // 2, total):
        with monkeypatch.context() as m:
            FailingDisk(m, fail_at=k)
            capsys.readouterr()
            assert run(base, "--out", out, "--overwrite", "--bootstrap", 30) == 2, k
        assert os.strerror(errno.ENOSPC) in error_line(capsys)
        assert {rel: p.read_bytes() for rel, p in visible_files(out).items()} == before, k
        assert not temp_leftovers(out), k


def test_metrics_report_survives_a_disk_that_stays_full(label_run, tiny_data, tmp_path, monkeypatch, capsys):
    """The last rename (new report into place) and the rollback both fail: the previous report is kept aside
    under a temporary name, and the next run puts it back before it writes."""
    sigma = tmp_path / "sigma"
    assert run(SIGMA, "--data", tiny_data, "--checkpoint_root", label_run, "--out", sigma) == 0
    base = (*METRICS, "--label-sigma", sigma, "--distil-sigma", sigma, "--label-run", label_run,
            "--distil-run", label_run, "--data", tiny_data, "--no-figures")
    out = tmp_path / "metrics"
    total = count_writes(monkeypatch, (*base, "--out", out))
    before = {rel: p.read_bytes() for rel, p in visible_files(out).items()}
    with monkeypatch.context() as m:
        FailingDisk(m, fail_at=total + 1, persistent=True)  # the swap's second rename and the rollback
        capsys.readouterr()
        assert run(base, "--out", out, "--overwrite", "--bootstrap", 30) == 2
    assert os.strerror(errno.ENOSPC) in error_line(capsys)
    kept = [p for p in tmp_path.glob(".metrics.*.old.tmp")]
    assert len(kept) == 1 and {rel: p.read_bytes() for rel, p in visible_files(kept[0]).items()} == before
    assert run(base, "--out", out, "--bootstrap", 30) == 0  # the kept report is put back, then replaced
    assert not list(tmp_path.glob(".metrics.*")) and (out / "report.md").is_file()
