"""Every ```python block of the README runs, in order, as one script."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_blocks():
    assert len(_blocks()) >= 3


def test_readme_snippets_run(tmp_path, monkeypatch):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (the data extra)")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    monkeypatch.chdir(tmp_path)  # the snippets write digits.xpnet and curves.png
    have_torch = importlib.util.find_spec("torch") is not None
    have_onnx = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    scope: dict = {}
    for i, code in enumerate(_blocks()):
        if "import torch" in code and not have_torch:
            continue  # the PyTorch interop example needs torch; the rest still runs
        if "import onnxruntime" in code and not have_onnx:
            continue  # the ONNX export needs the onnx extra
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), scope)
        except Exception as e:  # say which block, then fail with the error
            raise AssertionError(f"README python block {i + 1} failed: {e!r}\n{code}") from e
    assert (tmp_path / "digits.xpnet").is_file() and (tmp_path / "curves.png").is_file()
    assert scope["c"] is not None and tuple(scope["model"].parameters()[0].shape) == (100, 40)
