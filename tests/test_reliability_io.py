"""Run folders, round 3 (issue 25): ``--overwrite`` never loses the previous run, ownership by exact name at every
depth, ``summarize_runs --report`` replaces only its own reports, one lock per real folder, and any legal name works.

Failures are injected by monkeypatching the function a stage step calls (in-process, through
``kdq.function.cli.run`` as the scripts run) or, for SIGKILL, in a subprocess.  "Byte-identical" is checked on
every file of the previous run.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kdq.function.cli import UserError
from tests.helpers import ROOT, run_script
from tests.test_bad_input import HOLD_LOCK, LOG_LINE, run_case, tree

TRAIN = ("train_net/train_net.py", "--arch", "vgg_tiny", "--split", "train", "--val-split", "val", "--epochs", 2,
         "--checkpoints", 0, 1, 2, "--batch-size", 4, "--lr", 0.02, "--device", "cpu", "--no-progress")
SIGMA = ("sigma/train_sigma.py", "--arch", "vgg_tiny", "--layer", "fc1", "--split", "train", "--pic-num", 2,
         "--effect-num", 2, "--samples", 2, "--steps", 3, "--break-steps", 1, "--grid", 4, "--effective-rule", "off",
         "--no-progress", "--device", "cpu")
LONG = "r" * 250  # a legal folder name: 250 bytes of the 255 a name may have


class Runs:
    """A finished train_net run and a sigma run of it, made once for the module."""

    def __init__(self, data: Path, label: Path, sigma: Path):
        self.data, self.label, self.sigma = data, label, sigma


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_io")
    label, sigma = root / "label", root / "sigma"
    assert run_script(*TRAIN, "--data", tiny_data, "--out", label) == 0
    assert run_script(*SIGMA, "--data", tiny_data, "--checkpoint_root", label, "--out", sigma) == 0
    return Runs(tiny_data, label, sigma)


def train(r: Runs, out: Path, *extra) -> tuple[str, list]:
    script, *argv = TRAIN
    return script, [*argv, "--data", r.data, "--out", out, *extra]


def sigma(r: Runs, out: Path, *extra) -> tuple[str, list]:
    script, *argv = SIGMA
    return script, [*argv, "--data", r.data, "--checkpoint_root", r.label, "--out", out, *extra]


def error_lines(capsys) -> list[str]:
    """The lines a failed script wrote on stderr besides its log lines, each without its ``<prog>: error:``."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert all(": error: " in line for line in lines), lines
    return [line.split(": error: ", 1)[1] for line in lines]


def beside(out: Path) -> list[str]:
    """Hidden entries next to ``out``: a lock, a temporary or a moved-aside run left behind."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith("."))


def raiser(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


# ---- class 1: an old run survives a failed replacement ------------------------------------------------------------

# (module, attribute) of every step from the moment --overwrite moves the old run aside to the end of the first epoch
TRAIN_STEPS = {
    "distributed_init": ("kdq.function.train.stage", "init_distributed"),  # (before the move: nothing to put back)
    "deterministic": ("kdq.function.train.stage", "set_deterministic"),
    "prepare_out_after_the_move": ("kdq.function.io.rundir", "remove_stale_temps"),
    "run_record": ("kdq.function.train.stage", "RunRecord"),
    "seeding": ("kdq.function.train.stage", "seed_everything"),
    "loaders": ("kdq.function.train.stage", "make_loaders"),
    "optimizer": ("torch.optim", "SGD"),
    "epoch_loop": ("kdq.function.train.engine", "EpochLoop"),
    "epoch_0_checkpoint": ("kdq.function.train.engine", "save_checkpoint"),
    "first_epoch": ("kdq.function.train.engine", "train_one_epoch"),
}
FAILURES = {  # what the injected step raises → the exit status (None: the exception leaves run(), a traceback)
    "torch_error": (RuntimeError("Output size is too small"), None),
    "user_error": (UserError("injected refusal"), 2),
    "disk_full": (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 2),
    "ctrl_c": (KeyboardInterrupt(), 130),
}


INJECTED = [(step, "torch_error") for step in sorted(TRAIN_STEPS)] + \
    [(step, failure) for step in ("run_record", "first_epoch") for failure in sorted(FAILURES) if failure != "torch_error"]


def run_failing(script: str, argv: list, exc: BaseException, code: int | None) -> None:
    """Run the stage with a step that raises ``exc``: exit status ``code``, or for ``None`` (an internal error) the
    exception itself or exit 2 (a stage may turn a start-up step's internal error into one line)."""
    if code is None:
        try:
            code = run_script(script, *argv)
        except type(exc):
            return
        assert code == 2
    else:
        assert run_script(script, *argv) == code


@pytest.mark.parametrize("step,failure", INJECTED)
def test_overwrite_that_fails_before_its_first_epoch_keeps_the_old_run(runs, tmp_path, monkeypatch, capsys, step,
                                                                      failure):
    out = tmp_path / "run"
    shutil.copytree(runs.label, out)
    before = tree(out)
    exc, code = FAILURES[failure]
    module, name = TRAIN_STEPS[step]
    with monkeypatch.context() as m:
        m.setattr(f"{module}.{name}", raiser(exc))
        run_failing(*train(runs, out, "--overwrite"), exc, code)
    assert tree(out) == before, "the previous run was changed"
    assert beside(out) == [], "a lock or the moved-aside run was left"
    moved = step not in ("distributed_init", "deterministic")
    assert ("the previous run is back in place" in capsys.readouterr().err) == moved


@pytest.mark.parametrize("step", [("kdq.function.sigma.run", "prepare_model"),
                                  ("kdq.function.sigma.run", "fit_images"),
                                  ("kdq.function.sigma.layout", "write_image")])
def test_sigma_overwrite_that_fails_before_its_first_image_keeps_the_old_run(runs, tmp_path, monkeypatch, capsys,
                                                                            step):
    out = tmp_path / "sigma"
    shutil.copytree(runs.sigma, out)
    before = tree(out)
    with monkeypatch.context() as m:
        m.setattr(f"{step[0]}.{step[1]}", raiser(RuntimeError("CUDA error: an illegal memory access")))
        run_failing(*sigma(runs, out, "--overwrite"), RuntimeError(), None)
    assert tree(out) == before
    assert beside(out) == []
    assert "the previous run is back in place" in capsys.readouterr().err


def test_the_old_run_goes_once_the_first_epoch_is_saved(runs, tmp_path, monkeypatch, capsys):
    from kdq.function.train import engine

    out = tmp_path / "run"
    shutil.copytree(runs.label, out)
    real, calls = engine.train_one_epoch, []

    def second_epoch_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)
    monkeypatch.setattr(engine, "train_one_epoch", second_epoch_fails)
    assert run_case(*train(runs, out, "--overwrite")) == 2
    assert error_lines(capsys) == [f"OSError: [Errno {errno.ENOSPC}] "
                                   f"{os.strerror(errno.ENOSPC)} (--debug shows where)"]
    assert beside(out) == [], "the old run should have been deleted after the first epoch"
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert (out / "1.pth.tar").is_file() and not (out / "2.pth.tar").exists()


KILL_IN_FIRST_EPOCH = """
import os, signal, sys
import kdq.function.train.engine as engine
engine.train_one_epoch = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from tests.helpers import run_script
run_script(*sys.argv[1:])
"""


def killed_overwrite(runs: Runs, out: Path) -> None:
    """``--overwrite`` of ``out`` killed (SIGKILL) in its first epoch, in a subprocess."""
    script, argv = train(runs, out, "--overwrite")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_IN_FIRST_EPOCH, script, *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_killed_overwrite_leaves_the_old_run_aside_and_says_how_to_restore_it(runs, tmp_path, capsys):
    from kdq.function.io.rundir import aside_path

    out = tmp_path / "run"
    shutil.copytree(runs.label, out)
    before = tree(out)
    killed_overwrite(runs, out)
    aside = aside_path(out)
    assert tree(aside) == before
    restore = None
    for extra in ((), ("--overwrite",), ("--resume",)):
        assert run_case(*train(runs, out, *extra)) == 2
        [line] = error_lines(capsys)
        assert f"the previous run of {out} is kept at {aside} (an --overwrite stopped before its new run wrote a " \
               "result); put it back with `rm -rf " in line, line
        assert f"or drop it with `rm -rf {aside}`" in line
        restore = line.split("put it back with `")[1].split("`")[0]
    assert tree(aside) == before, "a refusal touched the kept run"
    subprocess.run(restore, shell=True, check=True)
    assert tree(out) == before and beside(out) == []
    assert run_case(*train(runs, out, "--overwrite")) == 0  # and it can be replaced again
    assert beside(out) == [] and json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_killed_overwrite_can_be_dropped_as_the_message_says(runs, tmp_path, capsys):
    from kdq.function.io.rundir import aside_path

    out = tmp_path / "run"
    shutil.copytree(runs.label, out)
    killed_overwrite(runs, out)
    assert run_case(*train(runs, out)) == 2
    [line] = error_lines(capsys)
    drop = line.split("or drop it with `")[1].split("`")[0]
    assert drop == f"rm -rf {aside_path(out)}"
    subprocess.run(drop, shell=True, check=True)
    assert run_case(*train(runs, out, "--resume")) == 0  # the new run, killed in its first epoch, continues
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


# ---- class 2: --overwrite deletes only what the stage wrote, at any depth -----------------------------------------

def refused_listing(capsys, stage: str, listed: str) -> None:
    [line] = error_lines(capsys)
    assert f"also holds files that {stage} did not write (" in line and listed in line, line


@pytest.mark.parametrize("extra,listed", [
    ("notes/todo.txt", "notes/"),  # a folder in a training run
    ("best.pth.tar", "best.pth.tar"),  # any *.pth.tar used to count as the stage's
    ("7.pth.tar", "7.pth.tar"),  # an epoch outside its recorded schedule 0 1 2
])
def test_training_overwrite_refuses_files_it_did_not_write(runs, tmp_path, capsys, extra, listed):
    out = tmp_path / "run"
    shutil.copytree(runs.label, out)
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    (out / extra).write_text("mine")
    before = tree(out)
    assert run_case(*train(runs, out, "--overwrite")) == 2
    refused_listing(capsys, "train_net", listed)
    assert tree(out) == before and beside(out) == []


@pytest.mark.parametrize("extra,listed", [
    ("img_0_effect/npy_files/my_map.npy", "img_0_effect/npy_files/my_map.npy"),
    ("img_0_effect/notes.txt", "img_0_effect/notes.txt"),
    ("img_9_effect/npy_files/entropy.npy", "img_9_effect/"),  # index 9 is outside its draw of 2
])
def test_sigma_overwrite_refuses_files_it_did_not_write_at_any_depth(runs, tmp_path, capsys, extra, listed):
    out = tmp_path / "sigma"
    shutil.copytree(runs.sigma, out)
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    (out / extra).write_text("mine")
    before = tree(out)
    assert run_case(*sigma(runs, out, "--overwrite")) == 2
    refused_listing(capsys, "train_sigma", listed)
    assert tree(out) == before


@pytest.mark.parametrize("extra,listed", [
    ("train/{cls}/my_own_photo.png", "train/{cls}/my_own_photo.png"),
    ("seg/val/my_masks/a.png", "seg/val/my_masks/"),  # a folder of classes the dataset does not have
    ("teacher/{cls}/img_99999.png", "teacher/{cls}/img_99999.png"),  # an image name make_dataset uses, elsewhere
])
def test_make_dataset_overwrite_keeps_a_users_photo(tmp_path, capsys, extra, listed):
    out = tmp_path / "data"
    argv = ["--out", out, "--num-classes", 2, "--image-size", 16, "--teacher-per-class", 2, "--train-per-class", 2,
            "--val-per-class", 2, "--no-progress"]
    assert run_script("make_dataset", *argv) == 0
    cls = sorted(p.name for p in (out / "train").iterdir())[0]
    extra, listed = extra.format(cls=cls), listed.format(cls=cls)
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    (out / extra).write_bytes(b"a photo")
    before = tree(out)
    capsys.readouterr()
    assert run_script("make_dataset", *argv, "--overwrite") == 2
    refused_listing(capsys, "make_dataset", listed)
    assert tree(out) == before
    shutil.rmtree(out / listed) if listed.endswith("/") else (out / extra).unlink()  # without it: replaced
    assert run_script("make_dataset", *argv, "--overwrite") == 0


def fake_report(out: Path, figures: dict[str, str]) -> None:
    """A metrics folder as the stage writes it: run.json, metrics.json recording its figures, and those files."""
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"stage": "find_knowledge", "status": "complete"}))
    (out / "metrics.json").write_text(json.dumps({"layers": {"fc1": {"figures": figures}}}))
    for name in ("metrics.csv", "report.md"):
        (out / name).write_text("x")
    for rel in figures.values():
        (out / rel).parent.mkdir(exist_ok=True)
        (out / rel).write_bytes(b"png")


def test_metrics_overwrite_keeps_a_users_poster_figure(tmp_path, capsys):
    from kdq.function.io.rundir import foreign_entries

    out = tmp_path / "metrics"
    fake_report(out, {"concepts": "figures/fc1_concepts.png"})
    assert foreign_entries(out, "find_knowledge") == []
    (out / "figures" / "my_poster_figure.svg").write_text("<svg/>")
    (out / "figures" / "fc1_other.png").write_bytes(b"not listed in metrics.json")
    before = tree(out)
    x = tmp_path / "x"
    assert run_case("sigma/find_knowledge_new.py", ["--label-sigma", x, "--distil-sigma", x, "--data", x,
                                                    "--out", out, "--overwrite"]) == 2
    refused_listing(capsys, "find_knowledge", "figures/fc1_other.png, figures/my_poster_figure.svg")
    assert tree(out) == before
    assert foreign_entries(out, "find_knowledge") == ["figures/fc1_other.png", "figures/my_poster_figure.svg"]


def test_a_symlink_inside_a_run_is_never_the_stages(runs, tmp_path, capsys):
    from kdq.function.io.rundir import foreign_entries

    out = tmp_path / "run"
    shutil.copytree(runs.label, out)
    (out / "1.pth.tar").unlink()
    (out / "1.pth.tar").symlink_to(runs.label / "1.pth.tar")
    assert foreign_entries(out, "train_net") == ["1.pth.tar"]
    assert run_case(*train(runs, out, "--overwrite")) == 2
    refused_listing(capsys, "train_net", "(1.pth.tar)")
    assert (out / "1.pth.tar").is_symlink() and (runs.label / "1.pth.tar").is_file()


# ---- class 3: summarize_runs --report replaces only a report it wrote ---------------------------------------------

@pytest.fixture
def study(tmp_path) -> Path:
    root = tmp_path / "study"
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "metrics.json").write_text(json.dumps({"table": []}))
    (root / "metrics" / "run.json").write_text(json.dumps({"stage": "find_knowledge", "wall_time_s": 1.5}))
    return root


def summarize(*argv) -> int:
    return run_case("summarize_runs", list(argv))


def test_summarize_refuses_to_replace_a_file_it_did_not_write(study, tmp_path, capsys):
    thesis = tmp_path / "thesis.md"
    thesis.write_text("# Chapter 1\n\nthree years of work\n")
    for extra in ((), ("--overwrite",)):
        assert summarize(study, "--report", thesis, *extra) == 2
        assert error_lines(capsys) == [f"--report: {thesis} exists and is not a report "
                                       "summarize_runs wrote; choose another --report (it is never replaced)"]
    assert thesis.read_text() == "# Chapter 1\n\nthree years of work\n"


def test_summarize_replaces_its_own_report_only_with_overwrite(study, tmp_path, capsys):
    report = tmp_path / "report.md"
    assert summarize(study, "--report", report) == 0
    first = report.read_text()
    assert first.startswith(f"# Combined report: {study}\n")
    (study / "metrics" / "run.json").write_text(json.dumps({"stage": "find_knowledge", "wall_time_s": 2.5}))
    capsys.readouterr()
    assert summarize(study, "--report", report) == 2
    assert error_lines(capsys) == [f"--report: {report} already holds a combined report; "
                                   "pass --overwrite to replace it"]
    assert report.read_text() == first
    assert summarize(study, "--report", report, "--overwrite") == 0
    assert "| metrics | find_knowledge | 2.5 |" in report.read_text()


def test_summarize_refuses_a_report_that_is_a_folder(study, tmp_path, capsys):
    folder = tmp_path / "reports"
    (folder / "old").mkdir(parents=True)
    assert summarize(study, "--report", folder, "--overwrite") == 2
    assert error_lines(capsys) == [f"--report: {folder} exists and is not a file; choose "
                                   "another --report"]
    assert (folder / "old").is_dir()


@pytest.mark.parametrize("field,value,shown", [("wall_time_s", "fast", 'str "fast"'), ("stage", 3, "int 3"),
                                               ("wall_time_s", True, "bool true")])
def test_summarize_checks_run_json_field_types(study, capsys, field, value, shown):
    path = study / "metrics" / "run.json"
    path.write_text(json.dumps({"stage": "find_knowledge", "wall_time_s": 1.0, field: value}))
    assert summarize(study) == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"{path}: field {field} is {shown}, not "), line


def test_summarize_skips_runs_moved_aside_and_damaged_tables(study, capsys):
    hidden = study / ".metrics.old"
    hidden.mkdir()
    (hidden / "run.json").write_text(json.dumps({"stage": "find_knowledge", "wall_time_s": "fast"}))
    (study / "list").mkdir()
    (study / "list" / "run.json").write_text("[1, 2]")  # JSON, not an object: not a run record, skipped
    assert summarize(study) == 0
    out = capsys.readouterr().out
    assert ".metrics.old" not in out and "list" not in out and "total" in out
    (study / "metrics" / "metrics.json").write_text(json.dumps({"table": "none"}))
    assert summarize(study, "--report", study / "r.md") == 2
    assert error_lines(capsys) == [f"{study / 'metrics' / 'metrics.json'}: its table is "
                                   "not a list of rows; the file is damaged or not kdq's"]


# ---- class 4: one lock per real folder ------------------------------------------------------------------------------

def test_every_spelling_of_a_folder_has_the_same_lock(tmp_path):
    from kdq.function.io.lock import lock_path

    real = tmp_path / "runs" / "label"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "runs_link").symlink_to(tmp_path / "runs")
    spellings = [real, tmp_path / "link", tmp_path / "runs" / ".." / "runs" / "label", tmp_path / "runs_link" / "label",
                 tmp_path / "runs" / "label" / "."]
    assert {lock_path(p) for p in spellings} == {tmp_path / "runs" / ".label.lock"}


@pytest.mark.parametrize("spelling", ["link", "runs/../runs/run", "runs_link/run"])
def test_a_second_writer_through_another_spelling_is_refused(runs, tmp_path, capsys, spelling):
    from kdq.function.io.lock import lock_path

    real = tmp_path / "runs" / "run"
    shutil.copytree(runs.label, real)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "runs_link").symlink_to(tmp_path / "runs")
    before = tree(real)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_path(real))], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = tmp_path / spelling
        assert run_case(*train(runs, out, "--overwrite")) == 2
        assert error_lines(capsys) == [f"--out: {out} is in use by another kdq process "
                                       f"(pid {holder.pid}); wait for it to end or stop it"]
    finally:
        holder.kill()
        holder.wait()
    assert tree(real) == before


def test_overwrite_through_a_symlinked_out_replaces_the_run_it_names(runs, tmp_path, capsys):
    real = tmp_path / "runs" / "run"
    shutil.copytree(runs.label, real)
    link = tmp_path / "link"
    link.symlink_to(real)
    (real / "train_log.json").write_text("[]")  # the replacement writes it again
    assert run_case(*train(runs, link, "--overwrite")) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads((real / "run.json").read_text())["status"] == "complete"
    assert len(json.loads((real / "train_log.json").read_text())) == 2
    assert beside(real) == [] and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_overwrite_through_a_symlink_puts_the_run_back(runs, tmp_path, monkeypatch):
    real = tmp_path / "runs" / "run"
    shutil.copytree(runs.label, real)
    link = tmp_path / "link"
    link.symlink_to(real)
    before = tree(real)
    monkeypatch.setattr("kdq.function.train.engine.train_one_epoch", raiser(KeyboardInterrupt()))
    assert run_case(*train(runs, link, "--overwrite")) == 130
    assert link.is_symlink() and tree(real) == before and beside(real) == []


# ---- class 5: any legal name works ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "r" * 230, "r" * 231, LONG, "r" * 255, "é" * 127, "日本" * 42])
def test_hidden_siblings_stay_within_the_name_limit(name):
    from kdq.function.io.atomic import NAME_MAX, hidden_stem
    from kdq.function.io.lock import lock_path
    from kdq.function.io.rundir import aside_path

    assert len(name.encode()) <= 255
    stem = hidden_stem(name)
    longest = f"{stem}.abcdefgh.old.tmp"
    assert len(longest.encode()) <= NAME_MAX == 255
    assert len(lock_path(Path("/tmp") / name).name.encode()) <= 255
    assert len(aside_path(Path("/tmp") / name).name.encode()) <= 255
    if len(name.encode()) <= 230:
        assert stem == "." + name  # short names keep their readable siblings
    else:
        assert stem != hidden_stem(name[:-1] + "s")  # two long names that start alike do not share them


def test_a_250_byte_out_for_training_and_its_overwrite(runs, tmp_path, capsys):
    out = tmp_path / LONG
    assert run_case(*train(runs, out)) == 0
    assert run_case(*train(runs, out, "--overwrite")) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert beside(out) == []
    assert "File name too long" not in capsys.readouterr().err


def test_a_250_byte_out_for_distillation(runs, tmp_path):
    out = tmp_path / LONG
    argv = ["--teacher_checkpoint", runs.label / "2.pth.tar", "--teacher-arch", "vgg_tiny", "--arch", "vgg_tiny",
            "--data", runs.data, "--split", "train", "--val-split", "val", "--layer", "fc1", "--epochs", 1,
            "--finetune-epochs", 0, "--batch-size", 4, "--device", "cpu", "--no-progress", "--out", out]
    assert run_case("distillation/distillation.py", argv) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete" and beside(out) == []


def test_a_250_byte_out_for_sigma_and_metrics(runs, tmp_path):
    out = tmp_path / LONG
    assert run_case(*sigma(runs, out)) == 0
    assert run_case(*sigma(runs, out, "--overwrite")) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete" and beside(out) == []
    report = tmp_path / ("m" * 250)
    argv = ["--label-sigma", out, "--distil-sigma", out, "--label-run", runs.label, "--distil-run", runs.label,
            "--data", runs.data, "--split", "train", "--layer", "fc1", "--bootstrap", 5, "--no-figures",
            "--out", report]
    assert run_case("sigma/find_knowledge_new.py", argv) == 0
    assert run_case("sigma/find_knowledge_new.py", argv + ["--overwrite"]) == 0
    assert (report / "report.md").is_file() and beside(report) == []


def test_a_250_byte_out_for_make_dataset(tmp_path):
    out = tmp_path / LONG
    argv = ["--out", out, "--num-classes", 2, "--image-size", 16, "--teacher-per-class", 1, "--train-per-class", 1,
            "--val-per-class", 1, "--no-progress"]
    assert run_case("make_dataset", argv) == 0
    assert run_case("make_dataset", argv + ["--overwrite"]) == 0
    assert (out / "dataset.json").is_file() and beside(out) == []
