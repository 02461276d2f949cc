"""The installed package (issue 16): one namespace, ``kdq``; nothing installed as top-level ``models`` or ``function``,
so a user's project with its own ``models/`` package imports both its own and kdq's."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT


def python(code: str, cwd) -> subprocess.CompletedProcess:
    """Run ``code`` with this interpreter in ``cwd``, as a user would: no PYTHONPATH, so only what is installed (and
    the current folder) is importable."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Skip unless kdq is installed into this interpreter from this checkout (``make`` installs it editable)."""
    probe = python("import kdq, pathlib; print(pathlib.Path(kdq.__file__).resolve().parent)",
                   tmp_path_factory.mktemp("probe"))
    if probe.returncode != 0:
        pytest.skip("kdq is not installed in this interpreter (run through make, which installs it)")
    if probe.stdout.strip() != str(ROOT.resolve()):
        pytest.skip(f"the installed kdq is another checkout ({probe.stdout.strip()})")


def test_only_kdq_is_installed(installed, tmp_path):
    done = python("""
        import importlib.util
        assert importlib.util.find_spec("models") is None, importlib.util.find_spec("models")
        assert importlib.util.find_spec("function") is None, importlib.util.find_spec("function")
        import kdq.models, kdq.function.cli, kdq.function.sigma.fit
        print("ok")
    """, tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_project_with_its_own_models_package_imports_both(installed, tmp_path):
    for package in ("models", "function"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"Tap = 'the user\\'s own {package}'\n")
    done = python("""
        import models, function
        from models import Tap as own
        from kdq.models import Tap, build_model
        import kdq
        assert own == "the user's own models" and function.Tap == "the user's own function"
        assert Tap.__module__ == "kdq.models.taps"
        model = build_model("vgg_tiny", num_classes=3)
        print(type(model).__module__, kdq.SigmaConfig.__module__)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["kdq.models.vgg", "kdq.function.sigma.config"]
