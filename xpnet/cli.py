"""The ``xpnet`` command: train, eval, predict, info.

    xpnet train                        # an MLP on the bundled digits, on the auto backend
    xpnet train --data mnist1d --backend torch --epochs 20
    xpnet train --format safetensors   # model.safetensors, readable by other tools
    xpnet eval runs/<time>/model.xpnet # on the data set recorded in the checkpoint
    xpnet info                         # every backend's version (imports none of them)
    xpnet info torch jax               # and these opened: usable or not, devices, why not
    xpnet selftest --backend cupy      # check a (GPU) backend: layers, compiled step, training

Without ``--backend``/``--device``, ``XPNET_BACKEND``/``XPNET_DEVICE`` decide, as in the
Python API. Errors (bad flags, missing files, an unusable backend) print one line
starting with ``error:`` on stderr and exit 2; ``XPNET_DEBUG=1`` shows the traceback.
Ctrl-C prints one line (what was interrupted, what was saved) and exits 130. ``train``
claims its ``--out`` folder with a lock file (``.xpnet-train.lock``: pid and host),
removed when it ends: a second run into it exits 2 naming the first one's pid.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .losses import LOSSES

EXIT_USAGE = 2
#: Exit status after Ctrl-C (128 + SIGINT), as shells and other CLIs report it.
EXIT_INTERRUPTED = 130
#: The losses the command offers (names from xpnet.losses.LOSSES)
CLI_LOSSES = ("cross_entropy", "quadratic")
MODELS = ("mlp", "resmlp", "cnn", "gru", "logistic")
OPTIMIZERS = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.1, "momentum": 0.05}  # default rates
SCHEDULES = ("cosine", "step", "none")
#: ``--data``: the bundled data sets and the folders of IDX files
DATA_SETS = ("digits", "mnist1d", "mnist:DIR", "fashion:DIR", "xor", "spirals")
PRECISIONS = ("32", "bf16-mixed", "fp16-mixed", "16-mixed")
SPLITS = ("test", "train")
#: ``train --format``: the checkpoint's file name for each
FORMATS = {"xpnet": "model.xpnet", "safetensors": "model.safetensors"}
#: Widest hidden layer --hidden accepts: wider ones only end in running out of memory
MAX_WIDTH = 100_000


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line instead of usage + error
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _data_loader(spec: str):
    """The loader ``--data spec`` names, checked without loading anything."""
    from . import datasets

    name, _, arg = spec.partition(":")
    if name in ("mnist", "fashion", "fashion_mnist"):
        if not arg:
            raise UsageError(f"--data {name}:DIR needs the folder holding the IDX files")
        loader = datasets.mnist if name == "mnist" else datasets.fashion_mnist
        return lambda: loader(arg)
    if name in ("digits", "mnist1d", "xor", "spirals") and not arg:
        return getattr(datasets, name)  # looked up at each call, so tests can stand in for it
    raise UsageError(f"unknown data set {spec!r}; expected {', '.join(DATA_SETS)}")


def _load_data(spec: str):
    return _data_loader(spec)()


def _hidden(text: str) -> list[int]:
    """``--hidden 256,128``: positive widths up to MAX_WIDTH (an argparse type)."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expects widths like 256,128, got {text!r}") from None
    if any(not 1 <= s <= MAX_WIDTH for s in sizes):
        raise argparse.ArgumentTypeError(
            f"widths must be between 1 and {MAX_WIDTH}, got {text!r}")
    return sizes


def _positive(text: str) -> float:
    """A finite number above 0 (an argparse type): float() also accepts nan and inf."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    """A number in [0, 1) (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def _at_least(low: int):
    """An argparse type: a whole number >= ``low``."""
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text!r}")
        return value
    return whole


def build_model(kind: str, n_in: int, n_out: int, hidden: list[int], activation: str,
                output_activation: str | None = None):
    """The models ``xpnet train --model`` offers, for inputs of ``n_in`` features."""
    import xpnet as xn

    if activation not in xn.models.ACTIVATIONS:
        raise UsageError(f"unknown activation {activation!r}; expected relu, sigmoid or tanh")
    if kind == "logistic":
        model = xn.models.logistic(n_in, n_out)
    elif kind == "mlp":
        model = xn.models.mlp(n_in, hidden, n_out, activation)
    elif kind == "resmlp":
        model = xn.models.residual_mlp(n_in, hidden[0] if hidden else 100, n_out)
    elif kind == "cnn":
        if n_in < 12:
            raise UsageError(f"--model cnn needs sequences of at least 12 values, got {n_in}")
        model = xn.models.mnist1d_cnn(n_in, 25, n_out)
    elif kind == "gru":  # each input value is one time step
        model = xn.models.mnist1d_gru(n_in, 6, n_out)
    else:
        raise UsageError(f"unknown model {kind!r}; expected mlp, resmlp, cnn, gru or logistic")
    if output_activation:
        model = xn.Sequential(model, xn.models.ACTIVATIONS[output_activation]())
    return model


def _optimizer(name: str, params, lr: float | None, total_steps: int, schedule: str):
    import xpnet as xn

    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {name!r}; expected sgd, momentum, adam or adamw")
    rate = OPTIMIZERS[name] if lr is None else lr
    if not rate > 0:
        raise UsageError(f"--lr must be positive, got {rate}")
    if schedule == "cosine":
        rate = xn.CosineLR(rate, total_steps)
    elif schedule == "step":
        rate = xn.StepLR(rate, step_size=max(1, total_steps // 3), gamma=0.1)
    elif schedule != "none":
        raise UsageError(f"unknown schedule {schedule!r}; expected cosine, step or none")
    if name == "adam":
        return xn.Adam(params, lr=rate)
    if name == "adamw":
        return xn.AdamW(params, lr=rate)
    return xn.SGD(params, lr=rate, momentum=0.9 if name == "momentum" else 0.0)


def _validation_split(x, y, fraction: float, seed: int):
    """``x, y`` less the held-out validation rows, and those rows (None when
    ``fraction`` is 0 or too small to hold out one example: xor's four)."""
    from .data import held_out_rows

    rows = held_out_rows(y, fraction, seed) if fraction > 0 else np.arange(0)
    if not 0 < len(rows) < len(y):
        return x, y, None
    keep = np.setdiff1d(np.arange(len(y)), rows)
    return x[keep], y[keep], (x[rows], y[rows])


def _check_train_flags(args) -> None:
    """Every name flag of ``train``, checked before any data is loaded."""
    import xpnet as xn

    _data_loader(args.data)
    for flag, value, known in (("model", args.model, MODELS),
                               ("optimizer", args.optimizer, tuple(OPTIMIZERS)),
                               ("schedule", args.schedule, SCHEDULES),
                               ("activation", args.activation, tuple(xn.models.ACTIVATIONS))):
        if value not in known:
            raise UsageError(f"unknown {flag} {value!r}; expected {', '.join(known)}")
    if args.format == "safetensors":  # not after training: the run would be lost
        from .checkpoint import _safetensors

        _safetensors()


def _backend_flags(args) -> None:
    """Without --backend/--device the environment decides, exactly as in the Python API."""
    args.from_environment = args.backend is None and args.device is None
    if args.from_environment:
        args.backend = os.environ.get("XPNET_BACKEND") or "auto"
        args.device = os.environ.get("XPNET_DEVICE") or None
    elif args.backend is None:  # only --device: the environment's library on that device
        args.backend = os.environ.get("XPNET_BACKEND") or "auto"


def _use(args) -> Any:
    import xpnet as xn

    try:
        be = xn.use(args.backend, device=args.device)
    except (xn.BackendUnavailableError, ValueError, TypeError) as e:
        if not getattr(args, "from_environment", False):
            raise
        # say where the request came from: the user typed no flag
        raise UsageError(f"XPNET_BACKEND={os.environ.get('XPNET_BACKEND', '')!r} "
                         f"XPNET_DEVICE={os.environ.get('XPNET_DEVICE', '')!r}: {e}") from None
    print(f"backend: {be.name} on {be.device_name}" + (f"  ({be.note})" if be.note else ""))
    return be


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _new_run_folder(root: Path = Path("runs")) -> Path:
    """A fresh ``runs/<timestamp>[-N]``: mkdir is atomic, so concurrent runs never share one."""
    root.mkdir(parents=True, exist_ok=True)
    stamp, n = _timestamp(), 0
    while True:
        path = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


#: The file a training run holds in its output folder: its pid and host, one line.
LOCK = ".xpnet-train.lock"


def _lock_holder(lock: Path) -> str | None:
    """The pid of the live run that holds ``lock`` (as text), or None when the lock is
    stale (its process is gone) and was removed. A lock written on another host, or
    that cannot be read, counts as held."""
    try:
        pid_text, _, host = lock.read_text().strip().partition(" ")
        pid = int(pid_text)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "unknown"
    if host.strip() not in ("", socket.gethostname(), "localhost"):
        return f"{pid} on {host.strip()}"
    try:
        os.kill(pid, 0)  # signal 0: is it alive?
    except ProcessLookupError:
        print(f"(removed the stale lock of pid {pid}, which ended: {lock})")
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        return None
    except PermissionError:  # alive, another user's
        pass
    return str(pid)


def _claim(out: Path) -> Path:
    """Claim ``out`` for this run: create its lock file, exclusively. Another live run's
    lock is a UsageError naming its pid; a stale one is taken over."""
    lock = out / LOCK
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None:
                raise UsageError(f"--out {out}: another xpnet train (pid {holder}) is writing "
                                 f"into this folder; wait for it to end or choose another "
                                 f"--out") from None
            continue
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return lock
    raise UsageError(f"--out {out}: cannot claim the folder: {lock} keeps coming back")


def _release(lock: Path | None) -> None:
    """Remove this run's lock (only if it is still this process's)."""
    if lock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if int(lock.read_text().split()[0]) == os.getpid():
            lock.unlink()


def _prepare_out(text: str | None, overwrite: bool) -> tuple[Path, bool]:
    """The output folder, created and known writable; and whether this run created it."""
    if text is None:
        try:
            return _new_run_folder(), True
        except OSError as e:
            raise UsageError(f"cannot create a run folder under runs/ ({e})") from None
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if (out / LOCK).exists() and (holder := _lock_holder(out / LOCK)) is not None:
        raise UsageError(f"--out {out}: another xpnet train (pid {holder}) is writing into "
                         f"this folder; wait for it to end or choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: the folder is not empty (an earlier run?); "
                         f"pass --overwrite to write into it anyway")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".xpnet-probe-{os.getpid()}"
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return out, created


def cmd_train(args) -> int:
    _backend_flags(args)
    from . import backends, distributed

    backends.prefer_threads(args.threads)  # before JAX starts: it reads XLA_FLAGS once

    comm = getattr(args, "comm", None)
    if args.distributed and comm is None:
        comm = distributed.detect()  # mpiexec (MPI) or torchrun (torch.distributed)
    if comm is not None and comm.size == 1:
        comm = None
    try:
        if comm is not None and args.backend in ("cupy", "cp") and comm.name == "MPI":
            comm = backends.adapter("cupy").communicator(comm)  # NCCL for CuPy arrays
        if comm is not None:
            args.device = distributed.local_device(args.backend, args.device, comm.local_rank)
        if comm is not None and comm.rank != 0:  # one voice and one writer: rank 0
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                return _train(args, comm)
        return _train(args, comm)
    except (Exception, KeyboardInterrupt) as e:
        if comm is None:
            raise
        return _abort(comm, e)


def _abort(comm, error: BaseException) -> int:
    """End every rank after an error on this one: the others would wait for it forever."""
    line = _error_line(error)
    if line is None:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        line = f"{type(error).__name__}: {error}"
    print(f"error: rank {comm.rank}: {_one_line(line)}", file=sys.stderr)
    sys.stderr.flush()
    comm.abort(EXIT_USAGE)
    return EXIT_USAGE  # some MPI libraries return from Abort


def _train(args, comm) -> int:
    _check_train_flags(args)
    _use(args)
    writer = comm is None or comm.rank == 0
    out, created = _prepare_out(args.out, args.overwrite) if writer else (None, False)
    lock = None
    try:
        lock = _claim(out) if writer else None
        if comm is not None:  # every rank writes to rank 0's folder name, if any rank writes
            out = Path(comm.bcast_object(str(out)))
        return _train_into(args, comm, out, writer)
    except BaseException:
        _release(lock)
        lock = None
        if created:  # leave no empty folder behind a run that wrote nothing
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    finally:
        _release(lock)


class _Stage:
    """What ``xpnet train`` is doing, for the one line Ctrl-C prints (:func:`_interrupted`):
    fit's callbacks keep ``epoch``, the 0-based epoch in progress, up to date."""

    def __init__(self, epochs: int):
        self.epochs, self.epoch, self.what = epochs, None, "before training"
        self.out: Path | None = None
        self.written: list[str] = []

    def callback(self):
        import xpnet as xn

        stage = self

        class EpochInProgress(xn.Callback):
            def on_train_begin(self, model, optimizer):
                super().on_train_begin(model, optimizer)
                stage.what, stage.epoch = "training", 0

            def on_epoch_end(self, epoch, logs):
                stage.epoch = epoch + 1

        return EpochInProgress()

    def line(self) -> str:
        if self.what == "writing":
            return (f"interrupted while writing to {self.out}; written: "
                    f"{', '.join(self.written) or 'nothing'}")
        where = (f"in epoch {min(self.epoch + 1, self.epochs)} of {self.epochs}"
                 if self.what == "training" else self.what)
        return f"interrupted {where}; nothing was saved (the model is written when training ends)"


def _train_into(args, comm, out: Path, writer: bool) -> int:
    import xpnet as xn

    stage = args.stage = _Stage(args.epochs)
    xn.seed(args.seed)
    x_tr, y_tr, x_te, y_te = _load_data(args.data)
    n_out = int(max(y_tr.max(), y_te.max())) + 1
    model = build_model(args.model, int(np.prod(x_tr.shape[1:])), n_out, args.hidden,
                        args.activation, "sigmoid" if args.loss == "quadratic" else None)
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    x_tr, y_tr, val = _validation_split(x_tr, y_tr, args.validation_split, args.seed)
    steps = args.epochs * -(-len(x_tr) // args.batch_size)
    opt = _optimizer(args.optimizer, model.parameters(), args.lr, steps, args.schedule)
    ranks = f"  ranks {comm.size}" if comm is not None else ""
    held = f"  validation {val[0].shape}" if val is not None else "  validation none"
    print(f"data: {args.data}  train {x_tr.shape}{held}  test {x_te.shape}  classes {n_out}"
          f"{ranks}")
    model.summary(input_shape=tuple(x_tr.shape[1:]))
    # fit raises FloatingPointError on a NaN loss, before anything is saved, and that says
    # all NumPy's overflow warnings would say, in one line
    quiet = contextlib.nullcontext() if os.environ.get("XPNET_DEBUG") else np.errstate(
        over="ignore", invalid="ignore", divide="ignore")
    # fit sets the threads of every library it can; one whose count is fixed when it
    # starts (JAX) got it from prefer_threads, and fit would only warn
    threads = None if xn.backends.adapter(model.backend.name).threads_note() else args.threads
    with quiet:
        # the weights kept are those of the epoch with the best validation accuracy; the
        # test set is read once, after training
        best = [xn.EarlyStopping("val_accuracy", patience=args.epochs)] if val else []
        history = xn.fit(model, x_tr, y_tr, loss=LOSSES[args.loss](), optimizer=opt,
                         epochs=args.epochs, batch_size=args.batch_size,
                         validation_data=val,
                         progress=None if args.progress else False, seed=args.seed,
                         distributed=comm if comm is not None else False,
                         precision=args.precision, callbacks=[stage.callback(), *best],
                         threads=threads)
        stage.what = "after training, while evaluating on the test set"
        result = xn.evaluate(model, x_te, y_te)
    if not writer:
        return 0
    name = FORMATS[args.format]
    stage.what, stage.out, written = "writing", out, stage.written
    kept = {"best_epoch": best[0].best_epoch + 1} if best else {}
    xn.save(out / name, model, optimizer=opt, epoch=args.epochs, data=args.data,
            test_accuracy=result["accuracy"], **kept)
    written.append(name)
    history.to_json(out / "history.json")
    written.append("history.json")
    try:
        history.plot(out / "curves.png")
        written.append("curves.png")
    except ImportError as e:
        print(f"(no curves.png: {e})")
    rate = np.mean(history["samples_per_sec"]) if "samples_per_sec" in history else 0.0
    if best:
        print(f"kept epoch {best[0].best_epoch + 1} of {args.epochs}: validation accuracy "
              f"{best[0].best:.4f}")
    print(f"test accuracy: {result['accuracy']:.4f} ({round(result['accuracy'] * len(y_te))}"
          f"/{len(y_te)})  test loss: {result['loss']:.4f}  ({rate:,.0f} samples/s)")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def _checkpoint(args):
    """The checkpoint's model on the chosen backend, and the data set to use: --data, else
    the one recorded when it was trained, else digits."""
    import xpnet as xn

    if args.data is not None:
        _data_loader(args.data)  # a bad name fails before the checkpoint loads
    be = _use(args)
    ck = xn.load_checkpoint(args.checkpoint, backend=be)
    recorded = ck.metadata.get("data")
    return ck.model, args.data or (recorded if isinstance(recorded, str) else None) or "digits"


def _checkpoint_and_data(args):
    model, data = _checkpoint(args)
    x_tr, y_tr, x_te, y_te = _load_data(data)
    print(f"data: {data}  ({args.split} split)")
    if args.split == "train":
        x_te, y_te = x_tr, y_tr
    return model, x_te.reshape(len(x_te), -1), y_te


def cmd_eval(args) -> int:
    import xpnet as xn

    _backend_flags(args)
    model, x, y = _checkpoint_and_data(args)
    result = xn.evaluate(model, x, y, loss=LOSSES[args.loss]())
    print("  ".join(f"{k}: {v:.4f}" for k, v in result.items()) + f"  ({len(y)} examples)")
    return 0


def _read_inputs(text: str) -> np.ndarray:
    """``predict --input``: one numeric array of examples from a .npy file."""
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"--input {path}: no such file")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"--input {path}: not a readable .npy file ({e})") from None
    if not isinstance(x, np.ndarray):  # an .npz archive loads as an NpzFile
        x.close()
        raise UsageError(f"--input {path}: an archive of several arrays; save the inputs "
                         f"as one array with np.save(\"inputs.npy\", x)")
    if x.ndim < 1 or x.dtype.kind not in "biuf":
        raise UsageError(f"--input {path}: expected a numeric array of examples, got "
                         f"{x.dtype} of shape {x.shape}")
    if x.size == 0:
        raise UsageError(f"--input {path}: holds no examples (shape {x.shape}); give at "
                         f"least one")
    x = x.astype(np.float32).reshape(len(x), -1)
    bad = ~np.isfinite(x)
    if bad.any():  # checked on the host, before upload: a NaN predicts class 0
        raise UsageError(f"--input {path}: {int(bad.sum())} value(s) are NaN or infinite "
                         f"(the first in example {int(np.argwhere(bad)[0][0])}); "
                         f"predictions from them mean nothing")
    return x


def _check_output(text: str) -> None:
    """``predict --output``: refuse before predicting what np.save could not write."""
    out = Path(text)
    if out.is_dir():
        raise UsageError(f"--output {out}: is a folder; name a file such as {out / 'labels.npy'}")
    if not out.parent.is_dir():
        raise UsageError(f"--output {out}: no folder {out.parent}")


def cmd_predict(args) -> int:
    import xpnet as xn

    _backend_flags(args)
    x = _read_inputs(args.input) if args.input else None
    if args.output:
        _check_output(args.output)
    if x is None:
        model, x, _ = _checkpoint_and_data(args)
    else:
        model, _ = _checkpoint(args)
    scores = xn.to_numpy(xn.predict(model, x))
    labels = scores.argmax(axis=1) if scores.ndim == 2 and scores.shape[1] > 1 else (
        scores.reshape(-1) > 0.5).astype(np.int64)
    if args.output:
        np.save(args.output, labels)
        print(f"wrote {len(labels)} predicted labels to {args.output}")
    else:
        print(" ".join(str(int(v)) for v in labels))
    return 0


def cmd_info(args) -> int:
    """Versions from the package metadata, without importing a library (torch and JAX
    take seconds each to import); the backends named, and NumPy (already imported),
    are opened too: usable or not, their devices, why not."""
    import platform

    from . import backends

    names = args.backends
    if "all" in names:
        names = list(backends.ADAPTERS)
    try:
        probe = {backends.canonical(n) for n in names} | {"numpy"}
    except ValueError as e:
        raise UsageError(f"info: {e}") from None
    print(f"xpnet {__version__}  (Python {platform.python_version()})")
    closed = []
    for name, a in backends.ADAPTERS.items():
        version = a.installed()
        head = f"  {name:<17} {version or '-':<13} "
        if name in probe:
            try:
                a.open(None)
                text = f"usable, devices: {', '.join(a.devices())}"
            except backends.BackendUnavailableError as e:
                text = f"not usable: {e}"
        elif version is None:
            text = f"not installed: {a.install}"
        else:
            text = "installed, not opened"
            closed.append(name)
        # under 80 columns: a long reason continues under the status column
        print(textwrap.fill(_one_line(text), 79, initial_indent=head,
                            subsequent_indent=" " * len(head)))
    if closed:
        print(f"(xpnet info {' '.join(closed)} opens them: usable or not, devices)")
    return 0


def cmd_selftest(args) -> int:
    from .selftest import main as selftest

    _backend_flags(args)
    _use(args)  # an unusable backend: one line, exit 2, as for train
    names = None if args.layers is None else [n.strip() for n in args.layers.split(",")]
    return selftest(args.backend, args.device, names)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (a
    flag, or None: the help says what decides then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, bool) or \
                action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def make_parser() -> _Parser:
    kw = {"formatter_class": _HelpFormatter}
    p = _Parser(prog="xpnet", description="Train and use xpnet models from the command line.",
                **kw)
    p.add_argument("--version", action="version", version=f"xpnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def backend_flags(q):
        q.add_argument("--backend", default=None,
                       help="numpy, cupy, torch, jax, array_api_strict or auto "
                            "(default: $XPNET_BACKEND, else auto)")
        q.add_argument("--device", default=None,
                       help="cpu, cuda, cuda:N, device1, ... (default: $XPNET_DEVICE, else "
                            "the backend's default device)")

    t = sub.add_parser("train", help="train a model and write checkpoint, history, curves",
                       description="Train a model and write its checkpoint, history.json "
                                   "and curves.png to a folder of its own.", **kw)
    t.add_argument("--data", default="digits", help=", ".join(DATA_SETS))
    t.add_argument("--model", default="mlp",
                   help="mlp, resmlp (residual MLP), cnn (MNIST-1D's 1-D CNN), gru "
                        "(MNIST-1D's bidirectional GRU), logistic")
    t.add_argument("--hidden", type=_hidden, default="256,128",
                   help="hidden widths, comma-separated (resmlp: the first)")
    t.add_argument("--activation", default="relu", help="relu, sigmoid or tanh")
    t.add_argument("--loss", default="cross_entropy", choices=CLI_LOSSES,
                   help="softmax cross-entropy, or quadratic on sigmoid outputs")
    t.add_argument("--optimizer", default="adam", help=", ".join(OPTIMIZERS))
    t.add_argument("--lr", type=_positive, default=None,
                   help="learning rate (default: the optimizer's, "
                        + ", ".join(f"{k} {v:g}" for k, v in OPTIMIZERS.items()) + ")")
    t.add_argument("--schedule", default="cosine", help="learning-rate schedule: "
                   + ", ".join(SCHEDULES))
    t.add_argument("--epochs", type=_at_least(1), default=40, help="passes over the data")
    t.add_argument("--batch-size", type=_at_least(1), default=16,
                   help="examples per optimizer step")
    t.add_argument("--seed", type=_at_least(0), default=0,
                   help="seeds the initial weights, shuffling and dropout")
    t.add_argument("--validation-split", type=_fraction, default=0.1,
                   help="fraction of the training data held out (stratified, seeded) to "
                        "keep the best epoch by validation accuracy; 0: none, keep the last")
    # One thread by default: the models offered here are small (the digits MLP's products
    # are 16 x 64 x 256), too small to share among threads, and on a busy CPU a pool of
    # one thread per core spent most of its time waiting (47-295 s against 9.6 s).
    t.add_argument("--threads", type=_at_least(1), default=1,
                   help="CPU threads for BLAS, OpenMP and torch (JAX: 1 or its own "
                        f"default); up to {os.cpu_count() or 1} here")
    t.add_argument("--out", default=None,
                   help="output folder (default: a new runs/<timestamp>)")
    t.add_argument("--format", default="xpnet", choices=list(FORMATS),
                   help="checkpoint format: xpnet (model.xpnet) or safetensors "
                        "(model.safetensors)")
    t.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder that already holds files")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar or per-epoch lines")
    t.add_argument("--precision", default="32", choices=PRECISIONS,
                   help="32, or forward and backward in bfloat16/float16 on float32 "
                        "weights (torch, jax: both; numpy, cupy: fp16)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of the job: mpiexec -n R or "
                        "torchrun --nproc_per_node=R")
    backend_flags(t)
    t.set_defaults(func=cmd_train)

    for name, func, text in (("eval", cmd_eval, "evaluate a checkpoint on a data set"),
                             ("predict", cmd_predict, "predict labels with a checkpoint")):
        e = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                           **kw)
        e.add_argument("checkpoint", help="a model.xpnet or model.safetensors that train wrote")
        e.add_argument("--data", default=None,
                       help="a data set as for train (default: the one it was trained on)")
        e.add_argument("--split", default="test", choices=SPLITS,
                       help="which part of the data set")
        if name == "eval":
            e.add_argument("--loss", default="cross_entropy", choices=CLI_LOSSES,
                           help="the loss to report")
        else:
            e.add_argument("--input", default=None, help="a .npy file of inputs instead of --data")
            e.add_argument("--output", default=None,
                           help="write labels to this .npy file (default: print them)")
        backend_flags(e)
        e.set_defaults(func=func)

    i = sub.add_parser("info", help="list backends: versions; usable or not, devices, why "
                       "not for those named", description="List the backends: installed "
                       "versions, read without importing them; and the ones named opened: "
                       "usable or not, devices, why not.", **kw)
    i.add_argument("backends", nargs="*", metavar="BACKEND",
                   help="open these backends (or all) to list their devices; importing "
                        "torch or JAX takes seconds, so the others only show the "
                        "installed version")
    i.set_defaults(func=cmd_info)
    s = sub.add_parser("selftest", help="check a backend and device here: every layer, "
                       "compiled steps, no host reads, a short training run",
                       description="Check a backend and device of this machine: every "
                                   "layer, compiled steps, no host reads, a short training "
                                   "run.", **kw)
    backend_flags(s)
    s.add_argument("--layers", default=None,
                   help="check_layer on these layers only, comma-separated (default: all)")
    s.set_defaults(func=cmd_selftest)
    return p


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error_line(e: BaseException) -> str | None:
    """The one line an error the user can act on prints; None for a bug (a traceback).
    With XPNET_DEBUG=1 everything but a usage error is a traceback."""
    from .backend import BackendUnavailableError
    from .checkpoint import CheckpointError
    from .datasets import DatasetError

    if isinstance(e, UsageError):
        return str(e)
    if os.environ.get("XPNET_DEBUG"):
        return None
    # torch's OutOfMemoryError is a RuntimeError, not a MemoryError
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return f"out of memory: {e or type(e).__name__}"
    if isinstance(e, FloatingPointError):  # fit's NaN check: the run diverged
        return f"training failed: {e or 'FloatingPointError'}"
    if isinstance(e, (BackendUnavailableError, CheckpointError, DatasetError, ImportError,
                      ValueError, TypeError, OSError)):
        return str(e) or type(e).__name__
    return None


def _interrupted(args: Any) -> str:
    """The one line Ctrl-C prints: what was interrupted, and what was saved."""
    stage = getattr(args, "stage", None)
    if stage is not None:
        return stage.line()
    return "interrupted; nothing was written"


#: what a launcher sets in each process: MPI (MPICH's hydra, Open MPI, PMIx) or torchrun
LAUNCHED = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "TORCHELASTIC_RUN_ID")


def _job(argv: list[str]) -> Any:
    """The job's communicator, made before the arguments are read when this process is
    one rank of a distributed run: an argument error on one rank must then end them all
    (the others would wait for it in MPI forever). None for one process."""
    if "--distributed" not in argv or not any(v in os.environ for v in LAUNCHED):
        return None
    from . import distributed

    comm = distributed.detect()
    return comm if comm.size > 1 else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    comm = _job(argv)
    code = _run(argv, comm)
    if comm is not None and code not in (0, None):
        sys.stderr.flush()
        comm.abort(code)  # this rank failed before training could end the job itself
    return code


def _run(argv: list[str], comm: Any) -> int:
    args = None
    try:
        try:
            args = make_parser().parse_args(argv)
        except SystemExit as stop:  # argparse's own exit (--help: 0, a usage error: 2)
            if comm is not None and stop.code not in (0, None):
                comm.abort(EXIT_USAGE)  # the job ends, not only this rank
            raise
        args.comm = comm
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, not fit's traceback
        if os.environ.get("XPNET_DEBUG"):
            raise
        print(f"error: {_interrupted(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        line = _error_line(e)
        if line is None:
            raise
        print(f"error: {_one_line(line)}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
