"""Mini-batches on the model's device: from data uploaded once, or streamed from the host.

``fit``, ``evaluate`` and ``predict`` take three kinds of data:

- **In memory**: NumPy arrays, lists, or arrays already on the model's backend. They
  move to the device once (:func:`on_backend`); each epoch one gather reorders the
  whole set there (:func:`shuffled`) and the batches are slices of it (:func:`batches`).
- **Streamed**: an ``np.memmap``, or any other object with ``__len__`` and slice
  indexing that is not an array (an h5py or zarr dataset, a class of your own). It
  stays where it is (a :class:`Column` refers to it): a background thread reads each
  mini-batch's rows, converts them to the model's dtype and puts them on the device,
  at most :data:`PREFETCH` batches ahead of the step that trains on them, so only a few
  batches are ever held in memory. ``np.memmap`` is an ndarray subclass but is
  streamed; every other ndarray is in memory, whatever its size (it already is in
  memory; to stream one, save it and open it with ``np.memmap``).
- **An iterable of** ``(x, y)`` **batches** (a generator, a PyTorch ``DataLoader``),
  given as ``x`` with no ``y``: read in the same background thread
  (:class:`BatchSource`), ``steps_per_epoch`` batches per epoch for fit, all of them for
  ``evaluate`` (``predict`` takes ``x``, ``(x,)`` or ``(x, y)`` batches). Arrays of
  another library (torch tensors on the CPU) come over through the host. Each batch's
  host arrays are checked as they are read, and an error names the batch: labels in
  range, inputs finite (the batch cannot be looked at again).

Shuffling. ``shuffle=True`` draws a permutation of the examples on the host from a
generator seeded by ``(seed, epoch)`` (:func:`epoch_order`), so epoch ``k`` sees the same
order whether training ran straight through or was resumed from a checkpoint.
``shuffle="blocks"`` shuffles contiguous blocks of ``ceil(batch_size / 4)`` rows
instead (:func:`block_order`), seeded the same way: each batch joins about four runs
of consecutive rows. Streamed data takes exactly the batches in-memory data takes for
the same order. A memmap's batch is one gather of its rows (``np.take``): from the page
cache any order is as fast, and sorting a batch's scattered rows would not make them
contiguous anyway. Any other object is only asked for slices: a batch's positions are
sorted and coalesced into runs of consecutive rows, one ``data[s:e]`` each (so a disk
reads forward), and put back in the order's sequence in memory. With ``shuffle=True``
those runs are mostly single rows; for data on a slow disk, or an object whose slices
are costly (h5py, zarr), ``"blocks"`` reads a few long runs per batch.
"""

from __future__ import annotations

import copy
import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from . import _args
from ._compat import namespace
from .backend import Backend, backend_of, dtype_name, to_numpy
from .backends import ops
from .datasets import stratified_split
from .losses import check_labels

#: Batches read ahead of the step that trains: the bound of the reader thread's queue.
PREFETCH = 2
#: ``shuffle="blocks"`` cuts the data into blocks of ``ceil(batch_size / BLOCKS_PER_BATCH)``
#: consecutive rows and shuffles their order.
BLOCKS_PER_BATCH = 4
#: Seconds ``close()`` waits for a reader thread to finish the item it is making (one
#: batch read; a thread still in a user's generator after that ends when it returns).
JOIN_SECONDS = 2.0


def on_backend(be: Backend, a: Any, dtype: Any, who: str, labels: bool = False) -> Any:
    """``a`` on ``be``: host data is copied there once; arrays already there pass.

    Inputs (``labels=False``) become ``dtype``, the model's float dtype, whatever they
    were (integers and bools too). Labels keep an integer or bool dtype; float targets
    become ``dtype``. Where the backend can use host memory as it is (NumPy, torch on
    the CPU) nothing is copied: training never writes into its data. Streamed data (see
    the module docstring) is not read here: it comes back as a :class:`Column` that
    reads and converts one batch at a time.
    """
    if isinstance(a, HostData):
        return a.placed(be, dtype, who, labels)
    if streams(a):
        return Column(a, be, dtype, who, labels)
    if isinstance(a, (np.ndarray, list, tuple)):
        a = np.asarray(a)
        keep = labels and (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_)
        return be.asarray(a, dtype=None if keep else dtype, copy=False)
    where = backend_of(a)
    if where != be:
        raise TypeError(
            f"{who}: data is on {where} but the model's parameters are on {be}; pass host "
            f"(NumPy) arrays or move the model with model.to(...)"
        )
    keep = labels and be.xp.isdtype(a.dtype, ("integral", "bool"))
    if not keep and a.dtype != be.dtype(dtype):
        a = be.xp.astype(a, be.dtype(dtype))
    return a


def streams(a: Any) -> bool:
    """Whether ``a`` is streamed rather than uploaded whole: an ``np.memmap``, or an
    object with ``__len__`` and ``__getitem__`` that is no array of a known library."""
    if isinstance(a, np.memmap):
        return True
    if isinstance(a, (np.ndarray, np.generic, list, tuple, str, bytes, dict, HostData)):
        return False
    if not (hasattr(a, "__len__") and hasattr(a, "__getitem__")):
        return False
    return not _is_array(a)


def _is_array(a: Any) -> bool:
    """Whether ``a`` is an array of a library xpnet knows (not, say, a DataLoader)."""
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        return False
    try:
        backend_of(a)
    except (TypeError, AttributeError):
        return False
    return True


# -- orders ---------------------------------------------------------------------------------
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` examples in ``epoch`` (depends only on its args)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# -- token windows: a language model's batches, drawn per step --------------------------------
class TokenWindows:
    """Random windows of a 1-D token array, one batch of ``(x, y)`` per step: see
    :func:`windows`. An iterator (``next`` gives the batch of the next step, for ever or
    for ``steps`` steps); :meth:`batch` gives any step's batch directly."""

    def __init__(self, tokens: Any, length: int, batch_size: int, seed: int = 0, *,
                 start: int = 0, steps: int | None = None):
        who = "windows"
        if not hasattr(tokens, "shape") or not hasattr(tokens, "dtype"):
            tokens = np.asarray(tokens)
        if len(tokens.shape) != 1 or not np.issubdtype(np.dtype(tokens.dtype), np.integer):
            raise ValueError(f"{who}: tokens must be a 1-D array of integer ids (a memmap "
                             f"works), got shape {tuple(tokens.shape)} and dtype "
                             f"{tokens.dtype}")
        self.tokens = tokens
        self.length = _args.integer(length, "length", who, minimum=1)
        self.batch_size = _args.integer(batch_size, "batch_size", who, minimum=1)
        self.seed = _args.integer(seed, "seed", who, minimum=0)
        self.step = _args.integer(start, "start", who, minimum=0)
        self.stop = None if steps is None else self.step + _args.integer(
            steps, "steps", who, minimum=1)
        self.count = int(tokens.shape[0]) - self.length  # window starts: 0 .. count - 1
        if self.count < 1:
            raise ValueError(f"{who}: {tokens.shape[0]} tokens hold no window of {length} "
                             f"and its next token; give at least {length + 1}")

    def starts(self, step: int) -> np.ndarray:
        """The first positions of step ``step``'s windows: ``batch_size`` draws from a
        generator seeded by ``(seed, step)`` alone, so any step can be made again."""
        return np.random.default_rng([self.seed, step]).integers(0, self.count,
                                                                 self.batch_size)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of step ``step``: ``x[b] = tokens[i:i+length]``, ``y[b] =
        tokens[i+1:i+length+1]`` for each start ``i``, int64, ``(batch_size, length)``.
        Only these ``batch_size * (length + 1)`` tokens are read (a memmap stays on
        disk)."""
        rows = self.starts(step)[:, None] + np.arange(self.length + 1)
        window = np.asarray(self.tokens[rows]).astype(np.int64, copy=False)
        return window[:, :-1], window[:, 1:]

    def __iter__(self) -> TokenWindows:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self.stop is not None and self.step >= self.stop:
            raise StopIteration
        out = self.batch(self.step)
        self.step += 1
        return out

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("windows without steps never end: they have no len()")
        return self.stop - self.step

    def __repr__(self) -> str:
        return (f"TokenWindows({self.tokens.shape[0]} tokens, length={self.length}, "
                f"batch_size={self.batch_size}, seed={self.seed}, step={self.step})")


def windows(tokens: Any, length: int, batch_size: int, seed: int = 0, *, start: int = 0,
            steps: int | None = None) -> TokenWindows:
    """A language model's training batches: each step, ``batch_size`` windows of
    ``length`` tokens at random places in the 1-D ``tokens`` (a NumPy array or an
    ``np.memmap`` of a tokenised corpus, any integer dtype), the inputs ``x =
    tokens[i:i+length]`` and the targets ``y = tokens[i+1:i+length+1]``, the next token
    at every position (nanoGPT's ``get_batch``).

    Step ``k``'s starts come from a generator seeded by ``(seed, k)``, so the batches
    are reproducible and a run resumed at step ``k`` (``start=k``) sees the batches the
    uninterrupted run would have. No window is copied in advance: each batch reads its
    ``batch_size * (length + 1)`` tokens when it is made (by fit's reader thread, ahead
    of the step).

    The result is an iterator of ``(x, y)`` batches: give it to ``fit`` as ``x`` with
    ``steps_per_epoch`` (each epoch goes on where the last ended), or with ``steps`` to
    ``evaluate``, which reads it to its end::

        xn.fit(model, xn.data.windows(train_ids, 64, 12, seed=0), steps_per_epoch=500,
               epochs=4, loss=xn.SoftmaxCrossEntropy(), optimizer=opt)
        xn.evaluate(model, xn.data.windows(val_ids, 64, 12, seed=1, steps=50))
    """
    return TokenWindows(tokens, length, batch_size, seed, start=start, steps=steps)


def block_order(n: int, seed: int, epoch: int, block: int) -> np.ndarray:
    """Contiguous blocks of ``block`` rows (the last may be shorter), in an order
    shuffled by ``(seed, epoch)`` alone: rows ``[s, s + block)`` stay together."""
    starts = np.arange(0, n, block)[np.random.default_rng([seed, epoch]).permutation(
        math.ceil(n / block))]
    rows = (starts[:, None] + np.arange(block)[None, :]).reshape(-1)
    return rows[rows < n]  # only the last block runs past the end


def order(shuffle: bool | str, n: int, seed: int, epoch: int, batch_size: int
          ) -> np.ndarray | None:
    """The order of epoch ``epoch`` for ``fit(shuffle=...)``; None keeps the data's."""
    if shuffle == "blocks":
        return block_order(n, seed, epoch, math.ceil(batch_size / BLOCKS_PER_BATCH))
    return epoch_order(n, seed, epoch) if shuffle else None


def shuffled(be: Backend, arrays: list[Any], order: np.ndarray | None) -> list[Any]:
    """Reorder every array along axis 0 by ``order`` on the device (one gather each)."""
    if order is None:
        return arrays
    idx = be.asarray(order.astype(np.int64))
    return [be.xp.take(a, idx, axis=0) for a in arrays]


def batches(arrays: list[Any], batch_size: int) -> Iterator[tuple[int, list[Any]]]:
    """``(size, [a[s:e] for a in arrays])`` for consecutive batches along axis 0.

    The end is clamped (``min(s + bs, n)``): array-api-strict rejects a slice past it.
    """
    if not arrays:
        return
    parts = [ops(namespace(a)).split_rows(namespace(a), a, batch_size) for a in arrays]
    arrays = []  # the batches are all that is kept (JAX's are copies)
    for batch in zip(*parts, strict=True):
        yield int(batch[0].shape[0]), list(batch)


# -- data placed for one model: what fit, evaluate and predict iterate ----------------------
class Source:
    """A model's data, placed and checked once: the inputs (device arrays, or
    :class:`HostData` that streams), the targets, and how an epoch is cut into batches.
    Made by :func:`prepare`; the loop asks it for batches and never looks at array types.

    Attributes
    ----------
    inputs : list
        One entry per model input (a Graph may take several).
    y : array, HostData or None
        The targets on the device (as the loss takes them per step, for fit), or None.
    n : int
        Examples (for an iterable of batches: its estimate, batches x first batch size).
    first : array
        The model's output for the first example (shapes, classes per position).
    outputs : int
        The output width: classes on the last axis, 1 for ``(n,)`` outputs.
    one_hot : bool
        Integer labels were made one-hot rows for the loss.
    steps : int
        Batches per epoch.
    """

    def __init__(self, model: Any, inputs: list[Any], y: Any, n: int, batch_size: int,
                 shuffle: bool | str, be: Backend, dtype: str):
        self.model, self.inputs, self.y, self.n = model, inputs, y, n
        self.batch_size, self.shuffle, self.be, self.dtype = batch_size, shuffle, be, dtype
        self.multi = model.multi_input
        self.first = model.forward(self.x([a[0:1, ...] for a in inputs]), train=False)
        self.outputs = int(self.first.shape[-1]) if self.first.ndim >= 2 else 1
        self.one_hot = False
        self.steps = steps(y, n, batch_size) if y is not None else math.ceil(n / batch_size)

    def x(self, arrays: list[Any]) -> Any:
        """What ``model.forward`` takes from one array per input."""
        return arrays if self.multi else arrays[0]

    def first_target(self) -> Any:
        return self.y[0:1, ...]

    def batches(self, epoch: int = 0, seed: int = 0, shuffle: bool | str | None = None
                ) -> EpochBatches:
        """The epoch's mini-batches: ``(size, [*inputs, y])`` (no ``y`` without targets),
        every array on the device, in the order ``shuffle`` and ``(seed, epoch)`` give."""
        arrays = self.inputs + ([self.y] if self.y is not None else [])
        return EpochBatches(self.be, arrays, self.batch_size,
                            self.shuffle if shuffle is None else shuffle, seed, epoch)

    def encode(self, loss: Any) -> None:
        """Targets as ``loss`` wants them per step (one-hot rows, made once here)."""
        encoded = encode_targets(loss, self.y, self.outputs, self.be.dtype(self.dtype))
        self.one_hot = encoded is not self.y
        self.y = encoded

    def facts(self) -> dict[str, Any]:
        """What ranks of a data-parallel run must agree on about their data."""
        return {"examples": self.n, "input_shapes": [list(a.shape[1:]) for a in self.inputs],
                "dtype": self.dtype}


def prepare(model: Any, x: Any, y: Any = None, *, who: str = "fit", batch_size: int = 32,
            shuffle: bool | str = False, steps_per_epoch: int | None = None,
            targets: bool = True, like: Source | None = None, precision: Any = None
            ) -> Source:
    """``x`` (and ``y``) on the model's device, checked, as a :class:`Source`.

    ``x``: host or device arrays (a list of them for a Graph with several inputs),
    streamed data (:func:`streams`), or an iterable of batches with no ``y`` (a
    generator, a DataLoader; a list of batches too, except for predict): ``(x, y)``
    batches for ``fit`` and ``evaluate``, ``x`` (or ``(x,)``, or ``(x, y)``) batches for
    ``predict``. Inputs become the model's float dtype, except integer ids for inputs an
    Embedding reads; what is still on the host is checked there (free, and the error
    names the bad values): integer labels and ids in range, and under
    ``precision="fp16-mixed"`` inputs within float16's range; a batch from an iterable is
    checked as it is read, its inputs finite too. ``targets=False``: inputs only
    (predict). ``like``: the training data whose example shapes these must have
    (validation data). ``precision``: fit's argument (a name, 16, or a MixedPrecision).
    """
    if targets and who == "fit":
        x, y = fit_data(x, y, shuffle, steps_per_epoch)
    elif given_as_batches(x, y, targets, who):
        x, y = BatchSource(x, None, who=who, targets=targets,
                           inputs=getattr(model, "input_count", 1)).columns()
    elif targets and y is None:
        raise ValueError(f"{who}: y is missing: give labels y with the arrays x, or x as an "
                         f"iterable of (x, y) batches (a generator, a DataLoader); got x of "
                         f"type {type(x).__name__} and no y")
    be = model.backend
    state = model.named_state()
    dtype = dtype_name(be.xp, state[0][1].value.dtype) if state else "float32"
    inputs = _inputs_on(model, be, dtype, x, who, _is_half(precision) and precision)
    n = _check_counts(who, inputs, y if targets else None)
    if like is not None:
        for i, (a, b) in enumerate(zip(inputs, like.inputs, strict=True)):
            if tuple(a.shape[1:]) != tuple(b.shape[1:]):
                raise ValueError(f"{who}: x_val{f'[{i}]' if len(inputs) > 1 else ''} has "
                                 f"examples of shape {tuple(a.shape[1:])}, the training data "
                                 f"{tuple(b.shape[1:])}")
    source = Source(model, inputs, None, n, batch_size, shuffle, be, dtype)
    if targets:
        source.y = _labels_on(be, dtype, y, source.outputs, who)
        source.steps = steps(source.y, n, batch_size)
    return source


def given_as_batches(x: Any, y: Any, targets: bool, who: str) -> bool:
    """Whether ``x`` (with no ``y``) is an iterable of batches rather than data: for
    predict (``targets=False``) a generator or a DataLoader, not a list (a Graph's
    inputs); with targets, as fit takes it, any iterable that is no array."""
    if who not in ("evaluate", "predict"):
        return False
    if y is not None:
        if isinstance(x, Iterator) or type(x).__name__ == "DataLoader":
            raise ValueError(f"{who}: x is an iterable of (x, y) batches ("
                             f"{type(x).__name__}); leave y out: the labels come in its "
                             f"batches")
        return False
    if isinstance(x, (np.ndarray, np.generic, str, bytes, dict, HostData)) or (
            not hasattr(x, "__iter__") or streams(x) or _is_array(x)):
        return False
    return targets or not isinstance(x, (list, tuple))


def _inputs_on(model: Any, be: Backend, dtype: str, x: Any, who: str, half: Any
               ) -> list[Any]:
    """The model's input arrays on its device, as a list (one entry per Graph input)."""
    wanted = getattr(model, "input_count", 1)
    kinds, counts = model.input_dtypes, model.input_id_counts
    if model.multi_input:
        if not isinstance(x, (list, tuple)) or len(x) != wanted:
            got = f"{len(x)} arrays" if isinstance(x, (list, tuple)) else type(x).__name__
            raise ValueError(f"{who}: {model.label} has {wanted} inputs; give x as a list "
                             f"of {wanted} arrays, got {got}")
        return [_input_on(be, a, dtype, f"{who} (x[{i}])", kinds[i], counts[i], half)
                for i, a in enumerate(x)]
    return [_input_on(be, x, dtype, f"{who} (x)", kinds[0], counts[0], half)]


def _input_on(be: Backend, a: Any, dtype: str, who: str, kind: str | None,
              ids: int | None, half: Any) -> Any:
    """One input on the device. Token ids for an Embedding (``kind`` set) stay integers,
    as labels do; those still on the host are checked to lie in ``[0, ids)`` first.
    ``half``: the precision, when it is float16's (inputs checked against its range)."""
    def check(where: str, host: np.ndarray) -> np.ndarray:
        if ids is not None:
            return check_ids(where, host, ids)
        return check_inputs(where, host, half)

    if isinstance(a, (list, tuple)) and (ids is not None or half):
        a = np.asarray(a)
    if isinstance(a, np.ndarray) and not streams(a):
        a = check(who, a)
    placed = on_backend(be, a, dtype, who, labels=kind is not None)
    if isinstance(placed, HostData):  # streamed, or an iterable's: each batch as read
        placed.check = check
        placed.finite = isinstance(placed, Part)
    return placed


def check_ids(who: str, a: np.ndarray, count: int) -> np.ndarray:
    """Host token ids checked to lie in ``[0, count)`` (free on the host; on a device an
    id out of range gives a NaN row); ``a`` as int64 where it is an unsigned type wider
    than 8 bits, which not every library has."""
    if a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        return a  # floats and bools: the Embedding names the dtype it expects
    if int(a.min()) < 0 or int(a.max()) >= count:
        bad = np.unique(a[(a < 0) | (a >= count)])
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"{who}: ids for the model's Embedding of {count} rows must lie in "
                         f"[0, {count - 1}], got {shown} ({len(bad)} distinct value(s) out "
                         f"of range, from {int(bad[0])} to {int(bad[-1])})")
    if a.dtype.kind == "u" and a.dtype.itemsize > 1:
        a = a.astype(np.int64)
    return a


#: The largest finite float16.
FLOAT16_MAX = 65504.0


def _is_half(precision: Any) -> bool:
    """Whether fit's ``precision`` runs in float16 (a name, 16, or a MixedPrecision)."""
    name = getattr(precision, "dtype_name", None)  # an xn.MixedPrecision
    if name is not None:
        return name == "float16"
    return isinstance(precision, (str, int)) and precision in ("fp16-mixed", "16-mixed", 16)


def check_numeric(who: str, a: np.ndarray, expected: str) -> None:
    """A TypeError naming ``who`` for data that is not numbers (strings, objects)."""
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{who}: expected {expected}, got an array of dtype {a.dtype}"
                        f"{f' ({a.flat[0]!r}, ...)' if a.size else ''}")


def check_inputs(who: str, a: np.ndarray, half: Any = None, finite: bool = False
                 ) -> np.ndarray:
    """Host inputs checked: numbers; with ``finite`` (a batch from an iterable, which
    cannot be looked at again) no NaN or inf; with ``half`` (a float16 precision) no
    value beyond float16's range, which the cast would make inf."""
    check_numeric(who, a, "numbers")
    if a.dtype.kind != "f" or a.size == 0:
        return a
    if finite:
        bad = ~np.isfinite(a)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{who}: {int(bad.sum())} value(s) are NaN or infinite (the "
                             f"first at {list(first)}); clean the data or drop such rows")
    if half:
        big = np.abs(a)
        where = int(np.nanargmax(big)) if not np.isnan(big).all() else None
        if where is not None and big.flat[where] > FLOAT16_MAX:
            raise ValueError(f"{who}: inputs reach {a.flat[where]}, beyond float16's range "
                             f"(±{FLOAT16_MAX:.0f}) for precision={half!r}; scale the inputs, "
                             f"or train with precision='bf16-mixed' or '32'")
    return a


def _count(a: Any) -> int:
    """Examples in ``a`` (array-api-strict arrays have no ``len``)."""
    return int(a.shape[0]) if hasattr(a, "shape") else len(a)


def _check_counts(who: str, inputs: list[Any], y: Any) -> int:
    """The number of examples, the same in every input and in ``y``; at least one."""
    xs = [_count(a) for a in inputs]
    counts = xs + ([] if y is None else [_count(y)])
    if len(set(counts)) != 1:
        x_text = f"x has {xs[0]}" if len(xs) == 1 else f"the inputs x[i] have {xs}"
        y_text = f" but y has {counts[-1]}" if y is not None else ""
        raise ValueError(f"{who}: {x_text} examples{y_text}; they must agree")
    if counts[0] == 0:
        raise ValueError(f"{who}: the data has no examples (0 rows); give at least one")
    return counts[0]


def _labels_on(be: Backend, dtype: str, y: Any, n_out: int, who: str) -> Any:
    """``y`` on the device. Integer labels still on the host are checked there first:
    free, and the error names the bad values (on a device the loss turns NaN instead)."""
    if isinstance(y, (list, tuple)):
        y = np.asarray(y)
    if isinstance(y, np.ndarray):  # a memmap too: read once, whole
        check_targets(who, y, n_out)
    placed = on_backend(be, y, dtype, f"{who} (y)", labels=True)
    if isinstance(placed, HostData) and not isinstance(y, np.ndarray):  # each batch, as read
        placed.check = lambda where, host: check_targets(where, host, n_out)
    return placed


def check_targets(who: str, y: np.ndarray, n_out: int) -> np.ndarray:
    """Host targets checked: numbers, and integer labels in range for ``n_out`` outputs
    (one output: labels 0 and 1)."""
    check_numeric(who, y, "integer labels or float targets")
    check_labels(who, y, max(n_out, 2), outputs=n_out)
    return y


# -- the data fit trains on -----------------------------------------------------------------
def fit_data(x: Any, y: Any, shuffle: Any, steps_per_epoch: Any) -> tuple[Any, Any]:
    """``fit``'s ``x, y`` checked: as given, or for an iterable of ``(x, y)`` batches
    (``y`` left out), the columns of a :class:`BatchSource` reading it."""
    if not (isinstance(shuffle, bool) or shuffle == "blocks"):
        raise ValueError(f"fit: shuffle must be True, False or 'blocks', got {shuffle!r}")
    if steps_per_epoch is not None:
        _args.integer(steps_per_epoch, "steps_per_epoch", "fit", minimum=1)
    if y is not None:
        if steps_per_epoch is not None:
            raise ValueError("fit: steps_per_epoch is for x given as an iterable of (x, y) "
                             "batches with no y; arrays x, y give ceil(n / batch_size) "
                             "steps per epoch")
        return x, y
    if isinstance(x, (np.ndarray, str, bytes, dict)) or not hasattr(x, "__iter__") or (
            _is_array(x)):
        raise ValueError(f"fit: y is missing: give labels y with the arrays x, or x as an "
                         f"iterable of (x, y) batches (a generator, a DataLoader); got x of "
                         f"type {type(x).__name__} and no y")
    return BatchSource(x, steps_per_epoch).columns()


def holdout(x: Any, y: Any, fraction: Any, seed: int, multi_input: bool = False,
            who: str = "fit") -> tuple[Any, Any, tuple[Any, Any]]:
    """Split ``fraction`` of the examples off as validation data: ``(x, y, (x_val, y_val))``.

    Keras's ``validation_split``, but drawn at random and stratified: with integer class
    labels ``(n,)`` or one-hot rows ``(n, k)``, each class gives ``round(count *
    fraction)`` of its examples (the two sets keep the classes' proportions); other
    targets are split at random as a whole. The draw depends only on ``seed``, so the
    same seed always holds out the same rows (a resumed fit too). Both parts keep the
    examples' order. ``x`` and ``y``: arrays in memory (host, or on the model's backend;
    a list of arrays for a Graph with ``multi_input``); streamed data and iterables of
    batches cannot be split here: hold the rows out yourself and pass
    ``validation_data``.
    """
    fraction = _args.real(fraction, "validation_split", who, low=0.0, high=1.0,
                          low_open=True, high_open=True)
    xs = list(x) if multi_input and isinstance(x, (list, tuple)) else [x]
    for name, a in [("y", y), *(("x", a) for a in xs)]:
        if a is None or streams(a) or not (isinstance(a, (np.ndarray, list, tuple))
                                           or _is_array(a)):
            kind = "no y (x an iterable of batches)" if a is None else type(a).__name__
            raise ValueError(f"{who}: validation_split needs x and y as arrays in memory, "
                             f"got {name}: {kind}; hold out validation rows yourself and "
                             f"pass validation_data=(x_val, y_val)")
    xs = [np.asarray(a) if isinstance(a, (list, tuple)) else a for a in xs]
    y = np.asarray(y) if isinstance(y, (list, tuple)) else y
    n = _count(y)
    val = held_out_rows(to_numpy(y), fraction, seed)
    if not 0 < len(val) < n:
        raise ValueError(f"{who}: validation_split={fraction} of {n} examples holds out "
                         f"{len(val)}; it must leave at least one example on each side")
    train = np.setdiff1d(np.arange(n), val)

    def take(a: Any, rows: np.ndarray) -> Any:
        if isinstance(a, np.ndarray):
            return a[rows]
        be = backend_of(a)
        return be.xp.take(a, be.asarray(rows), axis=0)

    parts = [(take(a, train), take(a, val)) for a in xs]
    x_tr = [p[0] for p in parts] if len(xs) > 1 else parts[0][0]
    x_val = [p[1] for p in parts] if len(xs) > 1 else parts[0][1]
    return x_tr, take(y, train), (x_val, take(y, val))


def held_out_rows(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The rows :func:`holdout` holds out of host targets ``y``, sorted: per class where
    ``y`` holds classes (integer labels ``(n,)``, one-hot rows), else at random."""
    n = len(y)
    rng = np.random.default_rng([seed, 0x5A1D])
    classes = None
    if y.ndim == 1 and (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        classes = y
    elif y.ndim == 2 and y.shape[1] > 1 and np.all((y == 0) | (y == 1)) and np.all(
            y.sum(axis=1) == 1):
        classes = y.argmax(axis=1)  # one-hot rows
    if classes is None:
        return np.sort(rng.permutation(n)[:round(n * fraction)])
    return np.sort(stratified_split(classes, fraction, rng)[1])


def encode_targets(loss: Any, y: Any, n_out: int, dtype: Any) -> Any:
    """``loss.encode_targets`` for labels on the device, or for each batch of streamed
    labels as it arrives (``y`` itself when the loss takes them as they are)."""
    if not isinstance(y, HostData):
        return loss.encode_targets(y, n_out, dtype)
    probe = y[0:1, ...]
    if loss.encode_targets(probe, n_out, dtype) is probe:
        return y
    return y.mapped(lambda a: loss.encode_targets(a, n_out, dtype))


def steps(y: Any, n: int, batch_size: int) -> int:
    """Batches per epoch: ``ceil(n / batch_size)``, or an iterable's own count."""
    if isinstance(y, Part):
        return y.source.steps
    return math.ceil(n / batch_size)


# -- streamed data --------------------------------------------------------------------------
class HostData:
    """Data that stays on the host until a batch of it is read; each batch is converted
    and moved to ``be`` as :func:`on_backend` moves a whole array (``labels``: keep
    integer dtypes), then ``transform`` (label encoding) runs on the device."""

    be: Backend | None = None
    dtype: Any = "float32"
    who = "data"
    labels = False
    transform: Callable[[Any], Any] | None = None
    shape: tuple[int, ...] = ()
    #: ``check(who, host_array) -> host_array``, run on each batch read from the host
    #: (in the reader thread) before it is uploaded: labels and ids in range, inputs
    #: within float16's range under fp16 (:func:`prepare` sets it).
    check: Callable[[str, np.ndarray], np.ndarray] | None = None
    #: Whether the check also refuses NaN and inf inputs (batches from an iterable).
    finite = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def placed(self, be: Backend, dtype: Any, who: str, labels: bool) -> HostData:
        """A copy that puts its batches on ``be`` as ``dtype``."""
        new = copy.copy(self)
        new.be, new.dtype, new.who, new.labels = be, dtype, who, labels
        return new

    def mapped(self, fn: Callable[[Any], Any]) -> HostData:
        """A copy whose batches go through ``fn`` once on the device."""
        new = copy.copy(self)
        first = self.transform
        new.transform = fn if first is None else (lambda a: fn(first(a)))
        return new

    def upload(self, part: Any, who: str | None = None) -> Any:
        """One batch read from the host (or an array already on ``be``) on ``be``; a host
        batch is checked first (``who``: how errors name it, by default ``self.who``)."""
        if type(part) is not np.ndarray:
            if isinstance(part, np.ndarray) or not _is_array(part):
                part = np.asarray(part)  # a memmap's rows: plain ndarray, same memory
            elif backend_of(part) != self.be:
                part = to_numpy(part)  # another library's array (a torch CPU tensor)
        if self.check is not None and isinstance(part, np.ndarray):
            part = self.check(who or self.who, part)
            if self.finite and not self.labels:
                check_inputs(who or self.who, part, finite=True)
        return on_backend(self.be, part, self.dtype, self.who, self.labels)

    def finish(self, a: Any) -> Any:
        return a if self.transform is None else self.transform(a)

    @staticmethod
    def _rows(key: Any, n: int, who: str) -> tuple[int, int]:
        rows = key[0] if isinstance(key, tuple) and key[1:] in ((), (Ellipsis,)) else key
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"{who}: streamed data gives rows by a slice, a[s:e, ...]; "
                            f"got the index {key!r}")
        start, stop, _ = rows.indices(n)
        return start, max(start, stop)


class Column(HostData):
    """A streamed array: ``data[s:e]`` (or rows by index, for an ndarray) read a batch
    at a time.

    Parameters
    ----------
    data : np.memmap, or an object with ``__len__`` and slice indexing
        ``data[s:e]`` gives rows ``s .. e - 1`` as something ``np.asarray`` takes. Only an
        ndarray (a memmap) is indexed by an array of positions; other objects are asked
        for runs of consecutive rows.
    be, dtype, who, labels : as for :func:`on_backend`
    """

    def __init__(self, data: Any, be: Backend, dtype: Any, who: str, labels: bool = False):
        self.data = data
        self.be, self.dtype, self.who, self.labels = be, dtype, who, labels
        n = len(data)
        shape = getattr(data, "shape", None)
        if shape is None:
            shape = np.asarray(self._slice(0, min(1, n))).shape
        self.shape = (n, *(int(d) for d in tuple(shape)[1:]))
        self.fancy = isinstance(data, np.ndarray)

    def __getitem__(self, key: Any) -> Any:
        """Rows ``s:e`` on the device (``a[0:1, ...]``: the first example, for shapes)."""
        s, e = self._rows(key, self.shape[0], self.who)
        return self.finish(self.upload(self.read(slice(s, e))))

    def read(self, rows: slice | np.ndarray) -> np.ndarray:
        """The rows ``rows`` (a slice, or positions in any order) as a host array, in
        that order. An ndarray (a memmap) gathers them at once; another object is asked
        for runs of consecutive rows, in increasing position, each put in its place."""
        if isinstance(rows, slice):
            return self._slice(rows.start, rows.stop)
        if self.fancy:  # one gather, one new buffer: the page cache serves any order
            return np.asarray(np.take(self.data, rows, axis=0))
        sort = np.argsort(rows, kind="stable")
        ascending = rows[sort]
        cut = np.r_[0, np.flatnonzero(np.diff(ascending) != 1) + 1, len(rows)]
        out = None
        for a, b in zip(cut[:-1], cut[1:]):
            part = self._slice(int(ascending[a]), int(ascending[b - 1]) + 1)
            if out is None:
                out = np.empty((len(rows), *part.shape[1:]), dtype=part.dtype)
            out[sort[a:b]] = part  # out[i] is row rows[i]
        return out

    def _slice(self, start: int, stop: int) -> np.ndarray:
        part = np.asarray(self.data[start:stop])
        if part.ndim == 0 or part.shape[0] != stop - start:
            got = "a scalar" if part.ndim == 0 else f"{part.shape[0]} rows"
            raise ValueError(f"{self.who}: reading rows {start}:{stop} of the streamed "
                             f"{type(self.data).__name__} gave {got}, expected "
                             f"{stop - start}")
        return part


class Part(HostData):
    """One array of an iterable's batches: input ``index`` (``y`` last, with targets).
    Its shape is that of the first batch, with the epoch's estimated example count."""

    def __init__(self, source: BatchSource, index: int, name: str):
        self.source, self.index, self.name = source, index, name
        sample = source.first[index]
        self.shape = (source.steps * int(sample.shape[0]), *(int(d) for d in sample.shape[1:]))

    def __getitem__(self, key: Any) -> Any:
        """Rows of the first batch on the device (``a[0:1, ...]``, for shapes)."""
        sample = self.source.first[self.index]
        s, e = self._rows(key, int(sample.shape[0]), self.who)
        return self.finish(self.upload(sample[s:e], f"{self.source.where(1)}, {self.name}"))


class BatchSource:
    """An iterable of batches that ``fit`` reads ``steps`` at a time, and ``evaluate``
    and ``predict`` to its end.

    A batch is ``(x, y)`` (``targets=False``, predict: ``x``, ``(x,)`` or ``(x, y)``, its
    ``y`` unused). ``x`` of a batch is an array, or a list of arrays for a model with
    several inputs; arrays are NumPy arrays, lists, or any library's arrays. For fit, a
    one-shot iterator (a generator) needs ``steps_per_epoch`` and goes on where it
    stopped in the next epoch; a re-iterable (a DataLoader, a list) is iterated again
    from its start each epoch, for ``steps_per_epoch`` batches or to its end (``len()``
    batches by default). Each batch's host arrays are checked as they are read
    (:attr:`HostData.check`): errors name the batch.

    Parameters
    ----------
    items : iterable of batches
    steps_per_epoch : int or None
        fit's argument; for ``who`` other than fit the iterable is read to its end.
    who : str
        ``"fit"``, ``"evaluate"`` or ``"predict"``: how errors start.
    targets : bool
        Batches hold ``y`` (fit, evaluate).
    inputs : int
        The model's inputs (predict tells ``[x1, x2]`` from ``(x, y)`` by it).
    """

    def __init__(self, items: Iterable, steps_per_epoch: int | None, *, who: str = "fit",
                 targets: bool = True, inputs: int = 1):
        self.items, self.who, self.targets, self.inputs = items, who, targets, inputs
        self.one_shot = isinstance(items, Iterator)
        self.to_end = who != "fit"
        if self.to_end:
            steps_per_epoch = _length(items) or 1  # an estimate, for the example count
        elif steps_per_epoch is None:
            if self.one_shot:
                raise ValueError(
                    f"fit: x is an iterator ({type(items).__name__}), which cannot start "
                    f"again for each epoch; give steps_per_epoch, the batches per epoch")
            steps_per_epoch = _length(items)
            if steps_per_epoch is None:
                raise ValueError(f"fit: x, an iterable of batches ({type(items).__name__}), "
                                 f"has no len(); give steps_per_epoch")
            if steps_per_epoch < 1:
                raise ValueError("fit: x, the iterable of batches, is empty")
        self.steps = steps_per_epoch
        self.epochs = 0  # epochs started, for messages
        self.first: list[Any] = []  # the first batch: shapes, and the first rows
        self.multi = inputs > 1
        self._iterator: Iterator = iter(items)
        item = next(self._iterator, _END)
        if item is _END:
            raise ValueError(f"{who}: x, the iterable of batches, gave no batch")
        self.first = self.split(item, 1)
        self._pending: Any = item  # trained on first, in the first epoch

    def where(self, step: int) -> str:
        """How errors name batch ``step`` (1-based) of the current epoch."""
        if self.to_end:
            return f"{self.who}: batch {step}"
        return f"{self.who}: batch {step} of epoch {max(self.epochs, 1)}"

    def columns(self) -> tuple[Any, Any]:
        """``(x, y)``: a Part per input (a list of them for several) and one for ``y``
        (None without targets)."""
        count = len(self.first) - (1 if self.targets else 0)
        parts = [Part(self, i, f"x[{i}]" if self.multi else "x") for i in range(count)]
        y = Part(self, count, "y") if self.targets else None
        return (parts if self.multi else parts[0]), y

    def split(self, item: Any, step: int) -> list[Any]:
        """``[*inputs, y]`` of one batch (no ``y`` without targets), checked against the
        first batch."""
        where = f"{self.where(step)} of x"
        if self.targets:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                size = f" of {len(item)}" if isinstance(item, (tuple, list)) else ""
                raise TypeError(f"{where}: expected an (x, y) pair, got a "
                                f"{type(item).__name__}{size}")
            xb, yb = item
            multi = isinstance(xb, (list, tuple))
            parts = [*(xb if multi else [xb]), yb]
        else:
            xb = self._inputs_of(item, where)
            multi = self.multi
            parts = list(xb) if multi else [xb]
        parts = [a if hasattr(a, "shape") else np.asarray(a) for a in parts]
        sizes = {int(a.shape[0]) if len(a.shape) else 0 for a in parts}
        if len(sizes) != 1 or sizes == {0}:
            what = "x and y" if self.targets else "the inputs"
            raise ValueError(f"{where}: {what} must hold the same number (at least one) "
                             f"of examples, got shapes {[tuple(a.shape) for a in parts]}")
        if not self.first:
            self.multi = multi
            return parts
        ys = 1 if self.targets else 0
        if multi != self.multi or len(parts) != len(self.first):
            raise ValueError(f"{where}: x has {len(parts) - ys} array(s), the first batch "
                             f"{len(self.first) - ys}")
        for i, (a, b) in enumerate(zip(parts, self.first)):
            if tuple(a.shape[1:]) != tuple(b.shape[1:]):
                what = ("y" if ys and i == len(parts) - 1
                        else (f"x[{i}]" if self.multi else "x"))
                raise ValueError(f"{where}: {what} has examples of shape "
                                 f"{tuple(a.shape[1:])}, the first batch "
                                 f"{tuple(b.shape[1:])}")
        return parts

    def _inputs_of(self, item: Any, where: str) -> Any:
        """A predict batch's ``x``: the batch itself, or the first of ``(x,)``/``(x, y)``;
        for a model of several inputs, a list of that many arrays is ``x``."""
        if not isinstance(item, (tuple, list)):
            return item
        if self.inputs > 1 and len(item) == self.inputs and not any(
                isinstance(a, (tuple, list)) for a in item):
            return item
        if len(item) in (1, 2) and (self.inputs == 1 or isinstance(item[0], (tuple, list))):
            return item[0]
        want = f"a list of {self.inputs} arrays" if self.inputs > 1 else "an array"
        raise TypeError(f"{where}: expected x ({want}), (x,) or (x, y), got a "
                        f"{type(item).__name__} of {len(item)}")

    def read(self, columns: list[Part]) -> Iterator[list[Any]]:
        """One epoch: up to ``steps`` batches (evaluate, predict: all), each
        ``[column.upload(part)]``. A re-iterable that ends sooner ends the epoch; an
        iterator that gives nothing raises."""
        self.epochs += 1
        if self._pending is not None:
            it: Iterator = _chain(self._pending, self._iterator)
            self._pending = None
        elif self.one_shot:
            it = self._iterator
        else:
            it = iter(self.items)
        steps = itertools.count(1) if self.to_end else range(1, self.steps + 1)
        for step in steps:
            item = next(it, _END)
            if item is _END:
                if step == 1:
                    raise ValueError(f"{self.who}: x ran out of batches: it gave none for "
                                     f"epoch {self.epochs} of this fit; a generator must "
                                     f"give steps_per_epoch batches for each epoch")
                return
            parts = self.split(item, step)
            where = self.where(step)
            yield [c.upload(parts[c.index], f"{where}, {c.name}") for c in columns]


def _length(items: Any) -> int | None:
    """``len(items)``, or None for an iterable without one (a generator)."""
    try:
        return len(items)
    except TypeError:
        return None


def _chain(first: Any, rest: Iterator) -> Iterator:
    yield first
    for item in rest:  # noqa: UP028 (`yield from` would close the user's generator with us)
        yield item


_END = object()


# -- one epoch's batches, read ahead in a thread ----------------------------------------------
class Prefetch:
    """The items of ``items``, made in a background thread at most ``depth`` ahead.

    Iterating gives them in order; an exception raised while making one is raised here,
    in the consuming thread, as it was (its message and the reader's traceback).
    ``close()`` stops the thread (it ends after the item it is making) and drops what
    was read ahead.
    """

    def __init__(self, items: Iterator, depth: int = PREFETCH):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True,
                                        name="xpnet-prefetch")
        self._thread.start()

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put(("item", item)):
                    return
        except BaseException as error:  # handed over: raised in the consuming thread
            self._put(("error", error))
        else:
            self._put(("end", None))

    def _put(self, message: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        while True:
            try:
                kind, value = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("xpnet: the data reader thread was stopped") from None
        if kind == "item":
            return value
        self._done = True
        self._thread.join()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(JOIN_SECONDS)


class EpochBatches:
    """One pass over the data in mini-batches: iterating gives ``(size, [array per
    column])`` with every array on the device; ``seen`` counts the examples given.

    In-memory arrays are gathered by the epoch's order on the device and sliced, as
    :func:`shuffled` and :func:`batches` do; streamed columns are read by a
    :class:`Prefetch` thread. Use it in a ``with`` block (or call :meth:`close`), so the
    thread ends with the loop however the loop ends.

    Parameters
    ----------
    be : Backend
    arrays : list of device arrays and HostData, all with the same number of rows
    batch_size : int
    shuffle, seed, epoch : the order, as :func:`order` makes it (unused by an iterable)
    """

    def __init__(self, be: Backend, arrays: list[Any], batch_size: int,
                 shuffle: bool | str = False, seed: int = 0, epoch: int = 0):
        self.seen = 0
        self.arrays = arrays
        self._reader: Prefetch | None = None
        self._memory: Iterator | None = None
        hosted = [a for a in arrays if isinstance(a, HostData)]
        parts = [a for a in hosted if isinstance(a, Part)]
        if parts:
            source = parts[0].source
            if len(parts) != len(arrays) or any(p.source is not source for p in parts):
                raise TypeError("fit: batches from an iterable cannot be mixed with arrays")
            self._reader = Prefetch(source.read(parts))
            return
        n = int(arrays[0].shape[0])
        rows = order(shuffle, n, seed, epoch, batch_size)
        in_memory = [a for a in arrays if not isinstance(a, HostData)]
        if in_memory:
            self._memory = batches(shuffled(be, in_memory, rows), batch_size)
        if hosted:
            self._reader = Prefetch(_read(hosted, rows, n, batch_size))

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> tuple[int, list[Any]]:
        if self._reader is None:
            size, batch = next(self._memory)  # type: ignore[arg-type]
        else:
            read = iter(next(self._reader))
            if self._memory is not None:
                size, kept = next(self._memory)
                kept = iter(kept)
            batch = [a.finish(next(read)) if isinstance(a, HostData) else next(kept)
                     for a in self.arrays]
            size = int(batch[0].shape[0])
        self.seen += size
        return size, batch

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def __enter__(self) -> EpochBatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def epoch_batches(be: Backend, arrays: list[Any], batch_size: int, shuffle: bool | str = False,
                  seed: int = 0, epoch: int = 0) -> EpochBatches:
    """The mini-batches of one epoch (see :class:`EpochBatches`)."""
    return EpochBatches(be, arrays, batch_size, shuffle, seed, epoch)


def _read(columns: list[Column], rows: np.ndarray | None, n: int, batch_size: int
          ) -> Iterator[list[Any]]:
    """For each batch, every column's rows on the device (run in the reader thread)."""
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        take = slice(s, e) if rows is None else rows[s:e]
        yield [c.upload(c.read(take)) for c in columns]
