"""The CUDA paths (issue 26 §5), for a machine with an NVIDIA GPU: every stage at tiny scale with ``--device cuda``,
the σ fit's ``--amp``, ``--channels-last``, ``--cudnn-benchmark``, ``--deterministic`` and ``--compile``, torchrun
with NCCL at world size 1, one σ fit on CUDA against the same fit on the CPU, the API on CUDA, and the token and
point fits (#24) on CUDA.

Run them with ``bash bench/gpu_check.sh`` (or ``python -m pytest -m cuda tests/test_cuda.py``).  Without CUDA they
skip; the tests that need no GPU check the CPU-noise helper the agreement test relies on, the API test on the
CPU, and the one line ``bench/gpu_check.sh`` prints on a machine without a GPU.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kdq
from kdq.function.io.checkpoint import load_checkpoint
from kdq.function.metrics.measures import METRICS
from kdq.function.sigma.layout import ARRAYS, EFFECT_LIST, FULL_LIST, array_path, read_names
from kdq.models import arch_info, build_model
from tests.helpers import ROOT, run_script

HAS_CUDA = torch.cuda.is_available()
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU (torch.cuda.is_available())")]


def needs_cuda(test):
    """Mark ``test`` as a CUDA test (``-m cuda``) that skips without a GPU."""
    for mark in CUDA:
        test = mark(test)
    return test


TRAIN = ("--arch", "vgg_tiny", "--batch-size", 8, "--lr", 0.02, "--device", "cuda", "--val-split", "val",
         "--no-progress")
SIGMA = ("--arch", "vgg_tiny", "--layer", "fc1", "--split", "train", "--pic-num", 8, "--effect-num", 8,
         "--samples", 8, "--steps", 6, "--break-steps", 2, "--grid", 4, "--effective-rule", "off",
         "--batch-images", 4, "--no-progress", "--device", "cuda")
EPOCHS = [0, 1, 2]
# the agreement fit: the paper's σ learning rate, so σ moves gently (0.01 → ~0.02 in 12 steps) and no cell sits on
# the clamp, where the log of a rounding difference is large
AGREE = kdq.SigmaConfig(grid=4, samples=8, steps=12, break_steps=3, lr=1e-4)
SUBPROCESS_TIMEOUT_S = 120


def child_env() -> dict[str, str]:
    """The environment of a child process: this one's, with the repository root added to PYTHONPATH (after
    whatever makes ``kdq`` importable here, e.g. the folder gpu_check.sh puts first on it) and one thread."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(ROOT)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}


def peak_cuda_bytes(call) -> tuple[object, int]:
    """``call()``'s result and the peak CUDA memory it allocated (0: it never touched the GPU)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated()


def run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def sigma_files(run: Path) -> dict[str, bytes]:
    """Every file a sigma run wrote except run.json (which holds wall times)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != "run.json"}


def assert_valid_sigma_run(run: Path, images: int, epochs: list[int], grid: int = 4) -> None:
    """A complete sigma run on CUDA: every drawn image effective (the rule is off), σ* finite inside the clamp
    [1e-3, 1] with one map per checkpoint, σ_f² positive, the other arrays finite where the fit ran."""
    record = run_json(run)
    assert record["status"] == "complete" and record["settings"]["device"] == "cuda", record["status"]
    names = read_names(run / FULL_LIST)
    assert len(names) == images and read_names(run / EFFECT_LIST) == names
    for i in range(images):
        best = np.load(array_path(run, i, "best_sigma_entropy"), allow_pickle=False)
        assert best.shape == (len(epochs), 1, grid, grid)
        assert np.isfinite(best).all() and (best >= 1e-3).all() and (best <= 1).all(), (i, best.min(), best.max())
        assert (np.load(array_path(run, i, "sigma_f_matrix")) > 0).all()
        for name in ARRAYS:
            arr = np.load(array_path(run, i, name), allow_pickle=False)
            assert np.isfinite(arr).any() and not np.isinf(arr).any(), (i, name)


@pytest.fixture(scope="module")
def study(tiny_data, tmp_path_factory):
    """The tiny study on CUDA, every stage in this process: teacher, label net, distilled student, the σ maps of
    both, the metrics.  Holds each stage's exit status and peak CUDA memory; the tests assert on them."""
    if not HAS_CUDA:
        pytest.skip("needs an NVIDIA GPU")
    runs = tmp_path_factory.mktemp("cuda_runs")
    data = ("--data", tiny_data)
    stages = {
        "teacher": ("train_net/train_net.py", *TRAIN, *data, "--split", "teacher", "--epochs", 2,
                    "--checkpoints", 2, "--out", runs / "teacher"),
        "label": ("train_net/train_net.py", *TRAIN, *data, "--split", "train", "--epochs", 2,
                  "--checkpoints", *EPOCHS, "--out", runs / "label"),
        "distil": ("distillation/distillation.py", "--teacher_checkpoint", runs / "teacher" / "2.pth.tar",
                   "--teacher-arch", "vgg_tiny", *TRAIN, *data, "--split", "train", "--layer", "fc1", "--epochs", 2,
                   "--finetune-epochs", 1, "--checkpoints", *EPOCHS, "--out", runs / "distil"),
        "sigma_label": ("sigma/train_sigma.py", "--checkpoint_root", runs / "label", *SIGMA, *data,
                        "--out", runs / "sigma_label"),
        "sigma_distil": ("sigma/train_sigma.py", "--checkpoint_root", runs / "distil", *SIGMA, *data,
                         "--out", runs / "sigma_distil"),
        "metrics": ("sigma/find_knowledge_new.py", "--label-sigma", runs / "sigma_label", "--distil-sigma",
                    runs / "sigma_distil", "--label-run", runs / "label", "--distil-run", runs / "distil", *data,
                    "--split", "train", "--layer", "fc1", "--bootstrap", 50, "--out", runs / "metrics"),
    }
    results = {}
    for name, argv in stages.items():
        try:
            results[name] = peak_cuda_bytes(lambda argv=argv: run_captured(argv))
        except Exception as exc:  # noqa: BLE001 - kept for the stage's own test, which raises it
            results[name] = exc
    return runs, results


def run_captured(argv) -> tuple[int, str]:
    """``run_script(*argv)``'s exit status and what it wrote on stderr (written on stderr again)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_script(*argv)
    sys.stderr.write(err.getvalue())
    return code, err.getvalue()


def finished(study, stage: str) -> int:
    """Assert that ``stage`` of ``study`` exited with status 0 (re-raising what it raised; its stderr in the
    message); returns its peak CUDA memory."""
    result = study[1][stage]
    if isinstance(result, Exception):
        raise result
    (code, stderr), peak = result
    assert code == 0, f"{stage}: exit status {code}: {stderr[-3000:]}"
    return peak


def assert_training_run(run: Path, checkpoints: list[int], learning: slice = slice(None)) -> None:
    """A complete training run made on CUDA: its checkpoints hold finite weights, the weight distances of the
    ``learning`` layers (rows conv, fc1, fc2, fc3) are positive at every epoch, every epoch's loss is finite, and
    run.json records the device."""
    record = run_json(run)
    assert record["status"] == "complete" and record["settings"]["device"] == "cuda"
    for epoch in checkpoints:
        state = load_checkpoint(run / f"{epoch}.pth.tar")["state_dict"]  # a GPU's checkpoint reads on the CPU
        assert state and all(t.device.type == "cpu" for t in state.values()), epoch
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), epoch
    wd = np.load(run / "weight_diff.npy")
    assert np.isfinite(wd).all() and (wd[learning, 1:] > 0).all()  # the weights moved at every epoch
    logs = sorted(run.glob("*_log.json"))  # train_log (train_net); distill_log and finetune_log (distillation)
    assert logs, sorted(p.name for p in run.iterdir())
    for log in logs:
        rows = json.loads(log.read_text())
        assert rows and all(math.isfinite(row["loss"]) for row in rows), (log.name, rows)


@needs_cuda
@pytest.mark.parametrize("stage", ["teacher", "label"])
def test_train_net_on_cuda(study, stage):
    runs, _ = study
    assert finished(study, stage) > 0  # it ran, and on the GPU
    assert_training_run(runs / stage, [2] if stage == "teacher" else EPOCHS)


@needs_cuda
def test_distillation_on_cuda(study):
    runs, _ = study
    assert finished(study, "distil") > 0
    assert_training_run(runs / "distil", EPOCHS, learning=slice(0, 2))  # distilled up to fc1


@needs_cuda
@pytest.mark.parametrize("net", ["label", "distil"])
def test_train_sigma_on_cuda(study, net):
    runs, _ = study
    assert finished(study, f"sigma_{net}") > 0
    assert_valid_sigma_run(runs / f"sigma_{net}", 8, EPOCHS)
    assert run_json(runs / f"sigma_{net}")["sample_chunk_used"] in (None, 8)  # all n at once on CUDA (no OOM)


@needs_cuda
def test_find_knowledge_on_maps_made_on_cuda(study):
    runs, _ = study
    finished(study, "metrics")
    rows = {row["metric"]: row for row in json.loads((runs / "metrics" / "metrics.json").read_text())["table"]
            if row["layer"] == "fc1"}
    for metric in METRICS:
        for net in ("label", "distil"):
            assert math.isfinite(float(rows[metric.key][net])), (metric.key, net)
    assert (runs / "metrics" / "report.md").is_file()


@needs_cuda
def test_train_sigma_amp_channels_last_cudnn_benchmark(study, tiny_data, tmp_path, monkeypatch):
    runs, _ = study
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    out = tmp_path / "fast"
    (code, stderr), peak = peak_cuda_bytes(lambda: run_captured((
        "sigma/train_sigma.py", "--checkpoint_root", runs / "label", *SIGMA, "--data", tiny_data, "--out", out,
        "--amp", "--channels-last", "--cudnn-benchmark")))
    assert code == 0 and peak > 0, stderr[-3000:]
    settings = run_json(out)["settings"]
    assert (settings["amp"], settings["channels_last"], settings["cudnn_benchmark"]) == ("bf16", True, True)
    assert torch.backends.cudnn.benchmark  # the flag reached cuDNN
    assert_valid_sigma_run(out, 8, EPOCHS)
    # (how far bf16 moves the maps is bench/sigma_speed.py's (d), not asserted here: at σ₀ = 0.01 the feature's
    # change is near bf16's rounding, and σ_f² moves by tens of percent on the CPU's bf16 too)


@needs_cuda
def test_deterministic_sigma_on_cuda_writes_identical_files(study, tiny_data, tmp_path):
    """--deterministic on CUDA: two fresh processes (CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts)
    write byte-identical files."""
    runs, _ = study
    outs = [tmp_path / "one", tmp_path / "two"]
    for out in outs:
        cmd = [sys.executable, str(ROOT / "sigma/train_sigma.py"), "--checkpoint_root", str(runs / "label"),
               *map(str, SIGMA), "--pic-num", "4", "--effect-num", "4", "--data", str(tiny_data), "--out", str(out),
               "--deterministic"]
        done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-3000:]
    assert run_json(outs[0])["settings"]["deterministic"] is True
    assert_valid_sigma_run(outs[0], 4, EPOCHS)
    assert sigma_files(outs[0]) == sigma_files(outs[1])


NCCL_RANK = '''"""One torchrun rank: NCCL at world size 1, kdq's collectives on it, then a stage through them."""
import sys

import torch
import torch.distributed as dist

from kdq.function import runtime
from kdq.function.cli import run
from kdq.function.stages import stage as load_script

torch.cuda.set_device(0)
dist.init_process_group("nccl")  # what runtime.init_distributed does on CUDA when WORLD_SIZE > 1
ctx, device = runtime.init_distributed("cuda")
assert dist.get_backend() == "nccl" and (ctx.rank, ctx.world_size) == (0, 1), (dist.get_backend(), ctx)
assert device == torch.device("cuda", 0), device
assert runtime.all_ok(True, device) and not runtime.all_ok(False, device)
assert runtime.all_reduce_sum([1.5, -2.0], device) == [1.5, -2.0]
module = load_script("train_net/train_net.py")
code = run(module.get_args_parser, module.main, sys.argv[1:])
print("NCCL rank: exit status", code, "and the group", "is still up" if dist.is_initialized() else "ended")
sys.exit(code)
'''


@needs_cuda
def test_torchrun_nccl_world_size_one(tiny_data, tmp_path):
    """torchrun launches a rank on cuda:LOCAL_RANK; kdq's barrier, all-reduce and clean-up run over NCCL."""
    rank = tmp_path / "nccl_rank.py"
    rank.write_text(NCCL_RANK)
    out = tmp_path / "label"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(rank),
           *map(str, TRAIN), "--data", str(tiny_data), "--split", "train", "--epochs", "2", "--checkpoints", "0", "2",
           "--out", str(out)]
    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert "NCCL rank: exit status 0 and the group ended" in done.stdout, done.stdout[-2000:]
    assert run_json(out)["world_size"] == 1
    assert_training_run(out, [0, 2])


def cpu_noise(monkeypatch) -> None:
    """Make every ``Tensor.normal_(generator=g)`` draw its numbers from a CPU generator seeded like ``g`` (one CPU
    stream per ``g``) and copy them to the tensor's device.

    The fit draws each image's noise from a generator on the compute device, and CUDA's generator (Philox) makes
    other numbers than the CPU's (Mersenne Twister) from the same seed: a CUDA fit and a CPU fit differ by their
    noise, not only by rounding.  With this, a CUDA fit sees exactly the CPU fit's noise, and what is left between
    them is the arithmetic of the two devices."""
    original = torch.Tensor.normal_
    streams: dict[int, tuple[torch.Generator, torch.Generator]] = {}

    def normal_(self, mean=0.0, std=1.0, *, generator=None):
        if generator is None:
            return original(self, mean, std)
        if id(generator) not in streams:  # the pair keeps ``generator`` alive, so its id is not reused
            streams[id(generator)] = (generator, torch.Generator().manual_seed(generator.initial_seed()))
        cpu = streams[id(generator)][1]
        return self.copy_(original(torch.empty(self.shape, dtype=self.dtype), mean, std, generator=cpu))

    monkeypatch.setattr(torch.Tensor, "normal_", normal_)


def agreement_inputs():
    torch.manual_seed(0)
    model = build_model("vgg_tiny", 4).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, arch_info("vgg_tiny").taps["conv"], images


def test_cpu_noise_reproduces_the_cpu_fit(monkeypatch, one_thread):
    """The helper of the CUDA–CPU agreement test, on the CPU: the noise it draws is the fit's own, bit for bit."""
    model, tap, images = agreement_inputs()
    plain = kdq.fit_sigma(model, tap, images, config=AGREE, seeds=[3, 4])
    cpu_noise(monkeypatch)
    patched = kdq.fit_sigma(model, tap, images, config=AGREE, seeds=[3, 4])
    for a, b in zip(plain, patched):
        assert np.array_equal(a.fit.history, b.fit.history) and a.sigma_f2 == b.sigma_f2
    other = kdq.fit_sigma(model, tap, images, config=AGREE, seeds=[5, 6])  # and the seed still matters
    assert not np.array_equal(other[0].fit.history, plain[0].fit.history)


@needs_cuda
@pytest.mark.parametrize("tf32, atol", [(False, 3e-4), (None, 1e-2)], ids=["fp32", "torch-default-tf32"])
def test_fit_sigma_on_cuda_matches_the_cpu(monkeypatch, tf32, atol):
    """One σ fit on CUDA and on the CPU with the same noise (``cpu_noise``): the same steps and the σ of every step
    within ``atol`` in log σ.

    Tolerances: fp32 on both devices differs by rounding only (other summation orders; cuDNN may pick
    Winograd/FFT kernels, ~1e-5 relative).  Measured on the CPU with this fit: summation-order changes
    (``sample_chunk`` 1 vs 8) move log σ by ≤ 2e-6, and perturbing every weight by 5e-4 (relative) moves it by
    ≤ 2.4e-3, i.e. about 5× the relative error of the features; 3e-4 leaves room for 6e-5 relative error.  By
    default torch lets cuDNN run fp32 convolutions in TF32 (10-bit mantissa, 2^-11 ≈ 4.9e-4 relative), about the
    5e-4 perturbation: 1e-2 leaves a factor 4."""
    if tf32 is not None:
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    model, tap, images = agreement_inputs()
    cpu = kdq.fit_sigma(model, tap, images, config=AGREE, seeds=[3, 4])
    cpu_noise(monkeypatch)
    (gpu, peak) = peak_cuda_bytes(lambda: kdq.fit_sigma(model.cuda(), tap, images, config=AGREE, seeds=[3, 4]))
    assert peak > 0 and next(model.parameters()).is_cuda
    for a, b in zip(cpu, gpu):
        assert (a.steps_run, a.best_step) == (b.steps_run, b.best_step)
        assert b.sigma_f2 == pytest.approx(a.sigma_f2, rel=10 * atol)
        assert a.fit.history.max() > 1.5 * AGREE.sigma0  # the fit moved σ: the comparison is not of the start
        np.testing.assert_allclose(np.log(b.fit.history), np.log(a.fit.history), rtol=0, atol=atol)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_fit_sigma_and_compare_through_the_api(device, tmp_path, one_thread):
    """kdq.fit_sigma on a model on ``device`` (label net and distilled net, 2 checkpoints each, 6 images with
    masks), then kdq.compare on the maps: every metric of both nets in the table and the report."""
    torch.manual_seed(0)
    tap = arch_info("vgg_tiny").taps["conv"]
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(6, 64, 64, dtype=torch.bool)
    masks[:, 16:48, 16:48] = True
    config = kdq.SigmaConfig(grid=4, samples=8, steps=8, break_steps=2, lr=1e-3)
    maps = {}
    for net, seed in (("label", 0), ("distil", 1)):
        torch.manual_seed(seed)
        model = build_model("vgg_tiny", 4).to(device)
        per_checkpoint = []
        for _ in range(2):  # two "checkpoints": the weights drift between them
            fits = kdq.fit_sigma(model, tap, images, masks, config, seeds=range(6))
            assert all(f.effective is not None and f.steps_run > 0 for f in fits)
            per_checkpoint.append(np.stack([f.sigma for f in fits]))
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p) * p.std())
            assert next(model.parameters()).device.type == device and all(
                p.requires_grad for p in model.parameters())  # left where and as it was
        maps[net] = np.stack(per_checkpoint, axis=1)  # (N, K, g, g)
        assert np.isfinite(maps[net]).all() and (maps[net] >= 1e-3).all() and (maps[net] <= 1).all()
    result = kdq.compare(maps["label"], maps["distil"], masks.numpy(), [0.0, 0.4], [0.0, 0.6], n_boot=50)
    rows = {row["metric"]: row for row in result.rows}
    assert {metric.key for metric in METRICS} <= set(rows)
    assert all(math.isfinite(rows[key][net]) for key in ("N_fg", "N_bg", "D_mean") for net in ("label", "distil"))
    report = result.write_report(tmp_path / "report").read_text()
    assert all(f"| {metric.label} |" in report or metric.key in report for metric in METRICS)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("arch, layer, units", [("bilstm_tiny", "proj", "tokens"), ("pointnet_tiny", "classifier.0",
                                                                                       "points")])
def test_fit_sigma_on_tokens_and_points(device, arch, layer, units, one_thread):
    """The unit fits of #24 on the device: token ids (the LSTM's backward in eval mode, cuDNN off for it) and point
    clouds; σ per unit, NaN exactly on padding, finite elsewhere."""
    torch.manual_seed(0)
    model = build_model(arch, 4, **({"vocab_size": 20, "max_length": 6} if units == "tokens" else {})).to(device)
    if units == "tokens":
        inputs = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 2, 9, 1, 6, 8]])
    else:
        inputs = torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(1))
    config = kdq.SigmaConfig(samples=4, steps=4, break_steps=1)
    fits = kdq.fit_sigma(model, layer, inputs, config=config, units=units, device=device)
    padding = (inputs == 0).numpy() if units == "tokens" else np.zeros((2, 16), bool)
    for fit, pad in zip(fits, padding):
        assert np.isnan(fit.sigma[pad]).all() and np.isfinite(fit.sigma[~pad]).all() and not fit.fit.failed


@needs_cuda
def test_compile_on_cuda_gives_the_eager_maps(study, tiny_data, tmp_path):
    """--compile on CUDA (inductor, Triton kernels): the same images' maps as the eager CUDA run to float rounding
    (the same noise: CUDA generators, same seeds).  Last: the first compile takes tens of seconds."""
    import torch._dynamo

    runs, _ = study
    torch._dynamo.reset()
    argv = ("sigma/train_sigma.py", "--checkpoint_root", runs / "label", *SIGMA, "--data", tiny_data,
            "--pic-num", 2, "--effect-num", 2, "--batch-images", 1)
    code, stderr = run_captured((*argv, "--out", tmp_path / "eager"))
    assert code == 0, stderr[-3000:]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    code, stderr = run_captured((*argv, "--out", tmp_path / "compiled", "--compile"))
    assert code == 0, stderr[-3000:]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it really was compiled
    assert_valid_sigma_run(tmp_path / "compiled", 2, EPOCHS)
    for i in range(2):
        a, b = (np.load(array_path(tmp_path / r, i, "best_sigma_entropy")) for r in ("eager", "compiled"))
        np.testing.assert_allclose(np.log(b), np.log(a), rtol=0, atol=1e-3)
    torch._dynamo.reset()


@pytest.mark.skipif(HAS_CUDA or shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA GPU")
def test_gpu_check_says_in_one_line_that_no_gpu_is_present(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no NVIDIA GPU") and done.stderr == "", (
        lines, done.stderr)
    assert list(tmp_path.iterdir()) == []  # nothing written
