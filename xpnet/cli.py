"""The ``xpnet`` command: train, eval, predict, info.

    xpnet train                        # an MLP on the bundled digits, on the auto backend
    xpnet train --data mnist1d --backend torch --epochs 20
    xpnet eval runs/<time>/model.xpnet --data digits
    xpnet info                         # every backend: usable or not, devices, why not

Errors (bad flags, missing files, an unusable backend) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .losses import LOSSES

EXIT_USAGE = 2
#: The losses the command offers (names from xpnet.losses.LOSSES)
CLI_LOSSES = ("cross_entropy", "quadratic")


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line instead of usage + error
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _load_data(spec: str):
    from . import datasets

    name, _, arg = spec.partition(":")
    if name == "digits":
        return datasets.digits()
    if name == "mnist1d":
        return datasets.mnist1d()
    if name in ("mnist", "fashion", "fashion_mnist"):
        if not arg:
            raise UsageError(f"--data {name}:DIR needs the folder holding the IDX files")
        loader = datasets.mnist if name == "mnist" else datasets.fashion_mnist
        return loader(arg)
    if name == "xor":
        return datasets.xor()
    if name == "spirals":
        return datasets.spirals()
    raise UsageError(f"unknown data set {spec!r}; expected digits, mnist1d, mnist:DIR, "
                     f"fashion:DIR, xor or spirals")


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--hidden expects widths like 256,128, got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise UsageError(f"--hidden widths must be positive, got {text!r}")
    return sizes


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
    else:
        raise UsageError(f"unknown model {kind!r}; expected mlp, resmlp, cnn or logistic")
    if output_activation:
        model = xn.Sequential(model, xn.models.ACTIVATIONS[output_activation]())
    return model


def _optimizer(name: str, params, lr: float | None, total_steps: int, schedule: str):
    import xpnet as xn

    defaults = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.1, "momentum": 0.05}
    if name not in defaults:
        raise UsageError(f"unknown optimizer {name!r}; expected sgd, momentum, adam or adamw")
    rate = defaults[name] if lr is None else lr
    if rate <= 0:
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


def _use(args) -> Any:
    import xpnet as xn

    be = xn.use(args.backend, device=args.device)
    print(f"backend: {be.name} on {be.device_name}" + (f"  ({be.note})" if be.note else ""))
    return be


def cmd_train(args) -> int:
    import contextlib

    comm = None
    if args.distributed:
        from .distributed import MPICommunicator, local_device

        comm = MPICommunicator()
        args.device = local_device(args.backend, args.device, comm.local_rank)
    if comm is not None and comm.rank != 0:  # one voice and one writer: rank 0
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return _train(args, comm)
    return _train(args, comm)


def _train(args, comm) -> int:
    import xpnet as xn

    _use(args)
    xn.seed(args.seed)
    x_tr, y_tr, x_te, y_te = _load_data(args.data)
    n_out = int(max(y_tr.max(), y_te.max())) + 1
    model = build_model(args.model, int(np.prod(x_tr.shape[1:])), n_out, _hidden(args.hidden),
                        args.activation, "sigmoid" if args.loss == "quadratic" else None)
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    steps = args.epochs * -(-len(x_tr) // args.batch_size)
    opt = _optimizer(args.optimizer, model.parameters(), args.lr, steps, args.schedule)
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    writer = comm is None or comm.rank == 0
    if comm is not None:  # every rank writes to rank 0's folder name, if any rank writes
        out = Path(comm.bcast_object(str(out)))
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    ranks = f"  ranks {comm.size}" if comm is not None else ""
    print(f"data: {args.data}  train {x_tr.shape}  test {x_te.shape}  classes {n_out}{ranks}")
    model.summary(input_shape=tuple(x_tr.shape[1:]))
    history = xn.fit(model, x_tr, y_tr, loss=LOSSES[args.loss](), optimizer=opt,
                     epochs=args.epochs, batch_size=args.batch_size,
                     validation_data=(x_te, y_te), progress=None if args.progress else False,
                     seed=args.seed, distributed=comm if comm is not None else False)
    result = xn.evaluate(model, x_te, y_te)
    if not writer:
        return 0
    xn.save(out / "model.xpnet", model, optimizer=opt, epoch=args.epochs, data=args.data,
            test_accuracy=result["accuracy"])
    history.to_json(out / "history.json")
    written = ["model.xpnet", "history.json"]
    try:
        history.plot(out / "curves.png")
        written.append("curves.png")
    except ImportError as e:
        print(f"(no curves.png: {e})")
    rate = np.mean(history["samples_per_sec"]) if "samples_per_sec" in history else 0.0
    print(f"test accuracy: {result['accuracy']:.4f} ({round(result['accuracy'] * len(y_te))}"
          f"/{len(y_te)})  test loss: {result['loss']:.4f}  ({rate:,.0f} samples/s)")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def _checkpoint_and_data(args):
    import xpnet as xn

    be = _use(args)
    model = xn.load(args.checkpoint, backend=be)
    x_tr, y_tr, x_te, y_te = _load_data(args.data)
    if args.split == "train":
        x_te, y_te = x_tr, y_tr
    return model, x_te.reshape(len(x_te), -1), y_te


def cmd_eval(args) -> int:
    import xpnet as xn

    model, x, y = _checkpoint_and_data(args)
    result = xn.evaluate(model, x, y, loss=LOSSES[args.loss]())
    print("  ".join(f"{k}: {v:.4f}" for k, v in result.items()) + f"  ({len(y)} examples)")
    return 0


def cmd_predict(args) -> int:
    import xpnet as xn

    if args.input:
        be = _use(args)
        model = xn.load(args.checkpoint, backend=be)
        path = Path(args.input)
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        x = np.load(path, allow_pickle=False).astype(np.float32)
        x = x.reshape(len(x), -1)
    else:
        model, x, _ = _checkpoint_and_data(args)
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
    import xpnet as xn

    print(f"xpnet {xn.__version__}  (numpy {np.__version__})")
    for name, info in xn.available().items():
        status = "usable" if info.usable else "not usable"
        version = info.version or "not installed"
        line = f"  {name:<17} {status:<11} {version:<14}"
        line += f"devices: {', '.join(info.devices)}" if info.usable else info.reason
        print(line)
    return 0


def make_parser() -> _Parser:
    p = _Parser(prog="xpnet", description="Train and use xpnet models from the command line.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def backend_flags(q):
        q.add_argument("--backend", default="auto",
                       help="numpy, cupy, torch, jax, array_api_strict or auto (default)")
        q.add_argument("--device", default=None, help="cpu, cuda, cuda:N, device1, ...")

    t = sub.add_parser("train", help="train a model and write checkpoint, history, curves")
    t.add_argument("--data", default="digits",
                   help="digits (default), mnist1d, mnist:DIR, fashion:DIR, xor, spirals")
    t.add_argument("--model", default="mlp",
                   help="mlp (default), resmlp (residual MLP), cnn (MNIST-1D's 1-D CNN), logistic")
    t.add_argument("--hidden", default="256,128", help="hidden widths (default 256,128)")
    t.add_argument("--activation", default="relu", help="relu (default), sigmoid or tanh")
    t.add_argument("--loss", default="cross_entropy", choices=CLI_LOSSES,
                   help="cross_entropy (default) or quadratic")
    t.add_argument("--optimizer", default="adam", help="adam (default), adamw, sgd, momentum")
    t.add_argument("--lr", type=float, default=None, help="learning rate (optimizer default)")
    t.add_argument("--schedule", default="cosine", help="cosine (default), step or none")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="output folder (default runs/<timestamp>)")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar or per-epoch lines")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: mpiexec -n R xpnet train --distributed")
    backend_flags(t)
    t.set_defaults(func=cmd_train)

    for name, func, text in (("eval", cmd_eval, "evaluate a checkpoint on a data set"),
                             ("predict", cmd_predict, "predict labels with a checkpoint")):
        e = sub.add_parser(name, help=text)
        e.add_argument("checkpoint")
        e.add_argument("--data", default="digits")
        e.add_argument("--split", default="test", choices=["test", "train"])
        if name == "eval":
            e.add_argument("--loss", default="cross_entropy", choices=CLI_LOSSES)
        else:
            e.add_argument("--input", default=None, help="a .npy file of inputs instead of --data")
            e.add_argument("--output", default=None, help="write labels to this .npy file")
        backend_flags(e)
        e.set_defaults(func=func)

    i = sub.add_parser("info", help="list backends: usable or not, devices, versions, why not")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    from .backend import BackendUnavailableError
    from .checkpoint import CheckpointError
    from .datasets import DatasetError

    try:
        args = make_parser().parse_args(argv)
        if getattr(args, "epochs", 1) < 1 or getattr(args, "batch_size", 1) < 1:
            raise UsageError("xpnet: --epochs and --batch-size must be at least 1")
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
    except (BackendUnavailableError, CheckpointError, DatasetError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
    except (ValueError, TypeError) as e:  # e.g. a model that does not fit the data
        if os.environ.get("XPNET_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
