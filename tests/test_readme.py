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


ROOT = README.parent


def _bash_blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _extras() -> dict[str, set[str]]:
    """pyproject's optional dependencies: extra -> distribution names (lower case)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {extra: {re.split(r"[<>=!~\[ ;]", req)[0].lower() for req in reqs}
            for extra, reqs in project["optional-dependencies"].items()}


def test_the_first_install_line_can_run_the_tour():
    """The README's first command installs what its tour needs: the data sets, the
    plot, array-api-strict (the tour loads the model there) and safetensors."""
    first = _bash_blocks()[0]
    extras = re.search(r'pip install -e "\.\[([a-z0-9,]+)\]"', first).group(1).split(",")
    installed = set().union(*(_extras()[e] for e in extras))
    tour = _blocks()[0]
    needs = {"scikit-learn", "matplotlib"}  # digits(), history.plot
    if "array_api_strict" in tour:
        needs.add("array-api-strict")
    if ".safetensors" in tour:
        needs.add("safetensors")
    assert needs <= installed, f"{first.strip()} leaves out {sorted(needs - installed)}"
    assert len(needs) == 4  # the tour still uses both; else this test checks less


def test_the_test_section_says_how_to_get_the_torch_and_jax_cases():
    """The README names the torch and JAX versions .ci/run installs."""
    ci = (ROOT / ".ci" / "run").read_text()
    pins = re.findall(r'"((?:torch|jax)==[0-9.]+)"', ci)
    assert sorted(p.split("==")[0] for p in pins) == ["jax", "torch"]
    assert any(all(f'"{p}"' in block for p in pins) and "pip install" in block
               for block in _bash_blocks())
    assert "SKIPPED" in README.read_text()


def _synopsis() -> dict[str, str]:
    """The README's `xpnet` synopsis: command -> its lines joined."""
    block = re.search(r"### The `xpnet` command\n\n```\n(.*?)```", README.read_text(),
                      flags=re.S).group(1)
    commands: dict[str, list[str]] = {}
    for line in block.splitlines():
        if line.startswith("xpnet "):
            current = commands.setdefault(line.split()[1], [])
        current.append(line.strip())
    return {k: " ".join(v) for k, v in commands.items()}


def test_the_cli_synopsis_matches_the_parser():
    """Every option of every command, its choices and its default, as --help has them."""
    import argparse

    import xpnet as xn
    from xpnet import cli

    tables = {"--data": cli.DATA_SETS, "--model": cli.MODELS,
              "--activation": tuple(xn.models.ACTIVATIONS), "--loss": cli.CLI_LOSSES,
              "--optimizer": tuple(cli.OPTIMIZERS), "--schedule": cli.SCHEDULES,
              "--format": tuple(cli.FORMATS), "--precision": cli.PRECISIONS,
              "--split": cli.SPLITS}
    parser = cli.make_parser()
    commands = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    synopsis = _synopsis()
    assert set(synopsis) == set(commands) | {"--version"}
    for name, sub in commands.items():
        text = synopsis[name]
        listed = dict(re.findall(r"\[(--[a-z-]+)(?: ([^\]\s]+))?", text))
        options = {o for a in sub._actions for o in a.option_strings
                   if o.startswith("--") and o != "--help"}
        assert set(listed) == options, (name, set(listed) ^ options)
        for a in sub._actions:
            if not a.option_strings:  # a positional: CHECKPOINT, BACKEND
                assert (a.metavar or a.dest).upper() in text, (name, a.dest)
        for flag, value in listed.items():
            action = next(a for a in sub._actions if flag in a.option_strings)
            if "|" in value:
                assert set(value.split("|")) == set(tables[flag]), (name, flag)
                if action.choices is not None:
                    assert set(action.choices) == set(tables[flag]), (name, flag)
            elif re.fullmatch(r"[0-9][0-9,.]*", value or ""):  # a default: 40, 256,128
                assert str(action.default) == value, (name, flag)
