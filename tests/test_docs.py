"""Packaging and documentation: xpnet ships ``py.typed``, the documentation site builds
with warnings as errors (``mkdocs build --strict``; ``.ci/run`` runs it too), and the
tour's code runs."""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_py_typed_is_in_the_package():
    assert (importlib.resources.files("xpnet") / "py.typed").is_file()


def test_pyproject_declares_py_typed():
    # setuptools >= 69 ships py.typed by itself; the declaration covers older ones
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["xpnet"]


def test_py_typed_is_in_the_built_wheel(tmp_path):
    # Build from a copy, so the checkout gets no build/ or egg-info of ours.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "xpnet", src / "xpnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "dist"
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_wheel(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = out / done.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert "xpnet/py.typed" in names, sorted(n for n in names if "/" not in n[6:])


def test_docs_build_strict(tmp_path):
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None
               or importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"docs extra not installed ({', '.join(missing)}): "
                    f"pip install -e \".[docs]\"")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-5000:]
    for page in (tmp_path / "site" / "api").glob("*/index.html"):
        text = page.read_text()  # docstrings' Sphinx roles became links
        assert ":func:`" not in text and ":class:`" not in text, page
    index = (tmp_path / "site" / "api" / "index.html").read_text()
    # every public name of xpnet links to its documentation
    import xpnet
    for name in xpnet.__all__:
        if name != "__version__":
            assert f"<code>xn.{name}</code></a>" in index, name


def test_tour_snippets_run(tmp_path, monkeypatch):
    """docs/tour.md's python blocks, in order, as one script (as the README's are)."""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (the data extra)")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "docs" / "tour.md").read_text(),
                        flags=re.S | re.M)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)  # the tour writes digits.xpnet, .safetensors, curves.png
    have_torch = importlib.util.find_spec("torch") is not None
    scope: dict = {}
    for i, code in enumerate(blocks):
        if "import torch" in code and not have_torch:
            continue
        try:
            exec(compile(code, f"docs/tour.md python block {i + 1}", "exec"), scope)
        except Exception as e:
            raise AssertionError(f"docs/tour.md python block {i + 1} failed: {e!r}\n{code}"
                                 ) from e
    for name in ("digits.xpnet", "digits.safetensors", "curves.png"):
        assert (tmp_path / name).is_file(), name
    assert scope["history"]["val_accuracy"][-1] > 0.9
    assert tuple(scope["model"].parameters()[0].shape) == (100, 40)


def test_training_page_covers_every_fit_parameter():
    """docs/training.md explains each of fit's parameters (its signature block is made
    from the code at build time; the explanations are prose, so this keeps them up)."""
    import inspect

    import xpnet as xn

    page = (ROOT / "docs" / "training.md").read_text()
    missing = [name for name in inspect.signature(xn.fit).parameters
               if name != "model" and f"`{name}`" not in page]
    assert not missing, f"docs/training.md does not mention fit's {missing}"
