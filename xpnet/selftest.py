"""``xpnet selftest``: check one backend and device of this machine, end to end.

For a new GPU machine (as ``torch.utils.collect_env``, ``cupy.show_config()`` or
``jax.print_environment_info()`` are for their libraries)::

    xpnet selftest --backend cupy --device cuda:0
    xpnet selftest --backend torch --device cuda
    xpnet selftest                                  # $XPNET_BACKEND/$XPNET_DEVICE, else auto

One table, one row per check, then the exit status: 0 only if every check held (a
check that cannot apply here, such as the host-read guard on a CPU, is SKIP and
counts as held), 1 otherwise. The checks:

1. ``versions``: xpnet, NumPy and the library, and the device (name, CUDA versions).
2. ``layer <name>``: :func:`xpnet.testing.check_layer` on every built-in layer, on small
   inputs (gradients by finite differences, results on the input's device and dtype,
   torch's ``meta`` device, array-api-strict's ``device1`` where installed).
3. ``compiled step``: :func:`xpnet.compile_step` (``jax.jit``, ``torch.compile``, a CUDA
   graph) against the eager step on an MLP with Dropout and on a model without matmuls
   (which CuPy can capture): the same losses, step after step.
4. ``no host reads``: eager and compiled steps with the library's detector on (CuPy:
   ``cupyx.allow_synchronize(False)``; torch on CUDA: ``set_sync_debug_mode("error")``):
   a step that reads a value back to the host raises.
5. ``training``: an MLP trained on the bundled digits (scikit-learn) or XOR to an
   accuracy floor.
"""

from __future__ import annotations

import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import backend as backend_mod
from . import datasets, layers
from ._version import __version__
from .backend import Backend, to_numpy
from .losses import SoftmaxCrossEntropy
from .optim import Adam
from .random import RandomStream
from .random import seed as seed_default_stream
from .train import Step, TrainStep, compile_step, evaluate, fit

#: Training must reach this test accuracy (digits: 0.96 after 4 epochs; XOR: 1.0).
ACCURACY_FLOOR = 0.9


@dataclass
class Row:
    check: str
    status: str  # OK, FAIL or SKIP
    detail: str = ""
    seconds: float = 0.0


# -- the inputs -----------------------------------------------------------------------------
def _values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Distinct values in [-1.5, 1.5], none near 0 and no two close: finite differences
    never straddle a ReLU's kink or a max-pool's tie, even in float32's larger steps."""
    n = int(np.prod(shape))
    return (((rng.permutation(n) + 0.25) * (3.0 / n) - 1.5).reshape(shape)).astype(np.float64)


def layer_cases() -> list[tuple[str, Callable[[], Any], Any]]:
    """``(name, factory, input shape)`` for every built-in layer; a list of shapes is a
    layer of several inputs, ``("ids", shape, n)`` integer ids below ``n``."""
    L = layers
    return [
        ("Linear", lambda: L.Linear(4, 3), (3, 4)),
        ("Sigmoid", L.Sigmoid, (3, 4)),
        ("Tanh", L.Tanh, (3, 4)),
        ("ReLU", L.ReLU, (3, 4)),
        ("LeakyReLU", lambda: L.LeakyReLU(0.1), (3, 4)),
        ("Softmax", L.Softmax, (3, 4)),
        ("GELU", L.GELU, (3, 4)),
        ("GELU tanh", lambda: L.GELU("tanh"), (3, 4)),
        ("SiLU", L.SiLU, (3, 4)),
        ("Conv1D", lambda: L.Conv1D(2, 3, 3, padding=1), (2, 2, 5)),
        ("Conv1D grouped", lambda: L.Conv1D(4, 4, 3, stride=2, dilation=2, groups=2),
         (2, 4, 7)),
        ("Conv2D", lambda: L.Conv2D(2, 2, 3, padding=1), (2, 2, 4, 4)),
        ("MaxPool1D", lambda: L.MaxPool1D(2), (2, 2, 6)),
        ("MaxPool2D", lambda: L.MaxPool2D(2), (2, 2, 4, 4)),
        ("AvgPool1D", lambda: L.AvgPool1D(2), (2, 2, 6)),
        ("AvgPool2D", lambda: L.AvgPool2D(2), (2, 2, 4, 4)),
        ("GlobalAvgPool1D", L.GlobalAvgPool1D, (2, 3, 5)),
        ("GlobalAvgPool2D", L.GlobalAvgPool2D, (2, 3, 3, 3)),
        ("Flatten", L.Flatten, (2, 2, 3)),
        ("Reshape", lambda: L.Reshape((3, 2)), (2, 6)),
        ("Dropout", lambda: L.Dropout(0.3), (3, 4)),
        ("BatchNorm1D", lambda: L.BatchNorm1D(4), (5, 4)),
        ("BatchNorm2D", lambda: L.BatchNorm2D(2), (3, 2, 3, 3)),
        ("LayerNorm", lambda: L.LayerNorm(4), (3, 4)),
        ("Embedding", lambda: L.Embedding(7, 3), ("ids", (2, 3), 7)),
        ("GRU", lambda: L.GRU(2, 3), (2, 3, 2)),
        ("LSTM", lambda: L.LSTM(2, 2, bidirectional=True, return_sequences=False),
         (2, 3, 2)),
        ("MultiHeadAttention", lambda: L.MultiHeadAttention(4, 2, causal=True), (2, 3, 4)),
        ("TransformerBlock", lambda: L.TransformerBlock(4, 2, mlp_ratio=1), (1, 3, 4)),
        ("PositionalEmbedding", lambda: L.PositionalEmbedding(5, 4), (2, 3, 4)),
        ("Add", L.Add, [(3, 4), (3, 4)]),
        ("Concat", lambda: L.Concat(axis=1), [(3, 2), (3, 3)]),
    ]


def _input(be: Backend, rng: np.random.Generator, spec: Any) -> Any:
    if isinstance(spec, list):
        return [_input(be, rng, s) for s in spec]
    if spec[0] == "ids":
        _, shape, n = spec
        return be.asarray(rng.integers(0, n, shape))
    return be.asarray(_values(rng, spec), dtype="float32")


# -- the checks -----------------------------------------------------------------------------
def _versions(be: Backend) -> Row:
    try:
        about = be.adapter.describe(be.device)
    except Exception as e:  # noqa: BLE001 - say what broke; the other checks still run
        return Row("versions", "FAIL", f"{type(e).__name__}: {e}")
    return Row("versions", "OK", f"xpnet {__version__}, numpy {np.__version__}; {about}")


def _check_layer(be: Backend, name: str, make: Callable[[], Any], spec: Any) -> Row:
    from .testing import check_layer  # imports pytest: only when the check runs

    rng = np.random.default_rng(0)
    with be:
        seed_default_stream(0)
        layer = make()
        x = _input(be, rng, spec)
    check_layer(layer, x)
    return Row(f"layer {name}", "OK")


def _mlp() -> Any:
    return layers.Sequential(layers.Linear(8, 16), layers.Tanh(), layers.Dropout(0.2),
                             layers.Linear(16, 3))


def _no_matmul() -> Any:
    return layers.Sequential(layers.LayerNorm(8), layers.Tanh(), layers.LayerNorm(8))


def _batch(be: Backend, classes: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(1)
    return (be.asarray(rng.standard_normal((16, 8)), dtype="float32"),
            be.asarray(rng.integers(0, classes, 16)))


def _step(be: Backend, build: Callable[[], Any], compiled: bool) -> tuple[Any, Any]:
    with be:
        seed_default_stream(3)
        model = build()
    loss, opt = SoftmaxCrossEntropy(), Adam(model.parameters(), lr=0.01)
    step = compile_step(model, loss, opt) if compiled else TrainStep(Step(model, loss, opt),
                                                                     compiler=False)
    return model, step


def _losses(step: Any, x: Any, y: Any, n: int, stream: RandomStream) -> list[Any]:
    with stream.active():
        return [step(x, y) for _ in range(n)]


def _compiled(be: Backend, label: str, build: Callable[[], Any], classes: int) -> Row:
    x, y = _batch(be, classes)
    runs = {}
    for compiled in (False, True):
        _, step = _step(be, build, compiled)
        costs = _losses(step, x, y, 6, RandomStream(7).restart(7, 0))
        runs[compiled] = ([float(to_numpy(c)) for c in costs], step)
    (eager, _), (costs, step) = runs[False], runs[True]
    diff = float(np.max(np.abs(np.subtract(costs, eager)) / np.maximum(1.0, np.abs(eager))))
    how = f"kind {step.kind}"
    if step.refused:
        how += f" ({step.refused.splitlines()[0][:70]})"
    elif step.kind == "eager":
        how += f" ({be.name} has no compiler)"
    ok = diff <= 1e-4 and eager[-1] < eager[0]
    return Row(f"compiled step: {label}", "OK" if ok else "FAIL",
               f"{how}; 6 steps, largest loss difference {diff:.1e}")


def _no_host_reads(be: Backend) -> Row:
    guard = be.adapter.forbid_host_reads(be.device)
    if guard is None:
        return Row("no host reads in a step", "SKIP",
                   f"{be.name} on {be.device_name} cannot detect a read (CuPy and torch on "
                   f"CUDA can)")
    x, y = _batch(be, 3)
    ran = []
    for label, compiled, build in (("eager MLP", False, _mlp), ("compiled MLP", True, _mlp),
                                   ("compiled no-matmul", True, _no_matmul)):
        _, step = _step(be, build, compiled)
        stream = RandomStream(7).restart(7, 0)
        _losses(step, x, y, 3, stream)  # warm-up, capture or trace: may read (once)
        be.synchronize()
        try:
            with guard():
                with stream.active():
                    for _ in range(5):
                        step(x, y)
        except Exception as e:  # noqa: BLE001 - the detector's error, named in the row
            where = [f for f in traceback.extract_tb(e.__traceback__) if "xpnet" in f.filename]
            at = f" at {where[-1].filename.rsplit('xpnet', 1)[-1]}:{where[-1].lineno}" \
                if where else ""
            return Row("no host reads in a step", "FAIL",
                       f"{label}: {type(e).__name__}{at}: {str(e).splitlines()[0][:80]}")
        ran.append(label)
    return Row("no host reads in a step", "OK", f"5 steps each: {', '.join(ran)}")


def _training(be: Backend) -> Row:
    try:
        x, y, xt, yt = datasets.digits()
        what, epochs, width = "digits MLP", 4, 64
    except ImportError:  # scikit-learn missing: XOR needs nothing
        x, y, xt, yt = datasets.xor()
        x, y = np.tile(x, (256, 1)), np.tile(y, 256)
        what, epochs, width = "XOR MLP", 4, 16
    with be:
        seed_default_stream(0)
        model = layers.Sequential(layers.Linear(x.shape[1], width), layers.ReLU(),
                                  layers.Linear(width, 10 if what.startswith("digits") else 2))
    fit(model, x, y, loss=SoftmaxCrossEntropy(), optimizer=Adam(model.parameters(), lr=3e-2),
        epochs=epochs, batch_size=128, progress=False, seed=0)
    acc = evaluate(model, xt, yt)["accuracy"]
    ok = acc >= ACCURACY_FLOOR
    return Row(f"training: {what}", "OK" if ok else "FAIL",
               f"test accuracy {acc:.3f} {'>=' if ok else '<'} {ACCURACY_FLOOR} after "
               f"{epochs} epochs")


def _timed(check: str, fn: Callable[[], Row]) -> Row:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rows say what the warnings would
        try:
            row = fn()
        except Exception as e:  # noqa: BLE001 - a check that breaks is a FAIL row
            row = Row(check, "FAIL", f"{type(e).__name__}: {' '.join(str(e).split())[:160]}")
    row.seconds = time.perf_counter() - start
    return row


def run(backend: str | None = None, device: str | None = None,
        say: Callable[[Row], None] | None = None, layer_names: list[str] | None = None
        ) -> list[Row]:
    """Every check on ``backend``/``device`` (default: the current selection); each row
    is passed to ``say`` as soon as it is done. ``layer_names``: check_layer on these
    layers only (names as in :func:`layer_cases`; default all)."""
    be = backend_mod.resolve(backend, device)
    cases = layer_cases()
    if layer_names is not None:
        unknown = set(layer_names) - {name for name, *_ in cases}
        if unknown:
            raise ValueError(f"selftest: no layer case {', '.join(sorted(unknown))}; the "
                             f"cases are {', '.join(name for name, *_ in cases)}")
        cases = [c for c in cases if c[0] in layer_names]
    if be.name == "array_api_strict":  # the standard the layers are written against
        be.xp.set_array_api_strict_flags(api_version="2024.12")
    checks: list[tuple[str, Callable[[], Row]]] = [("versions", lambda: _versions(be))]
    for name, make, spec in cases:
        checks.append((f"layer {name}",
                       lambda name=name, make=make, spec=spec: _check_layer(be, name, make,
                                                                            spec)))
    checks += [("compiled step: MLP", lambda: _compiled(be, "MLP", _mlp, 3)),
               ("compiled step: no matmul", lambda: _compiled(be, "no matmul", _no_matmul, 8)),
               ("no host reads in a step", lambda: _no_host_reads(be)),
               ("training", lambda: _training(be))]
    rows = []
    state = backend_mod.selection_state()
    try:
        for check, fn in checks:
            rows.append(_timed(check, fn))
            if say is not None:
                say(rows[-1])
    finally:
        backend_mod.restore_selection(state)
    return rows


def main(backend: str | None = None, device: str | None = None,
         layer_names: list[str] | None = None) -> int:
    """Print the table; 0 if every check held, else 1."""
    be = backend_mod.resolve(backend, device)
    print(f"xpnet selftest: {be.name} on {be.device_name}" + (f"  ({be.note})" if be.note
                                                             else ""))
    print(f"{'check':<34} {'result':<6} {'time':>6}  detail")

    def say(row: Row) -> None:
        print(f"{row.check:<34} {row.status:<6} {row.seconds:>5.1f}s  {row.detail}",
              flush=True)

    rows = run(be.name, be.device_name, say, layer_names)
    failed = [r.check for r in rows if r.status == "FAIL"]
    skipped = sum(r.status == "SKIP" for r in rows)
    if failed:
        print(f"FAILED: {len(failed)} of {len(rows)} checks: {', '.join(failed)}")
        return 1
    print(f"all {len(rows)} checks held" + (f" ({skipped} could not apply here)"
                                            if skipped else ""))
    return 0
