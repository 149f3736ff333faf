"""Packaging and documentation: xpnet ships ``py.typed``, and the documentation site
builds with warnings as errors (``mkdocs build --strict``; ``.ci/run`` runs it too)."""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
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
    index = (tmp_path / "site" / "api" / "index.html").read_text()
    # every public name of xpnet links to its documentation
    import xpnet
    for name in xpnet.__all__:
        if name != "__version__":
            assert f"<code>xn.{name}</code></a>" in index, name
