"""Data larger than memory: np.memmap and slice-only datasets streamed by a reader
thread, iterables of (x, y) batches, and the memory such a fit takes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import assert_on
from helpers import blobs

import xpnet as xn
from xpnet import data as data_mod


def _memmap(path, a):
    """``a`` written to ``path``, opened again read-only as a memmap."""
    out = np.memmap(path, dtype=a.dtype, mode="w+", shape=a.shape)
    out[:] = a
    out.flush()
    del out
    return np.memmap(path, dtype=a.dtype, mode="r", shape=a.shape)


class SliceOnly:
    """An h5py-like dataset: ``len``, ``shape`` and ``a[s:e]`` only. It counts the reads
    and their sizes, refuses fancy indexing, and fails with OSError at row ``fail_at``."""

    def __init__(self, a, fail_at=None):
        self.a, self.fail_at = a, fail_at
        self.shape = a.shape
        self.reads: list[int] = []

    def __len__(self):
        return len(self.a)

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError(f"SliceOnly takes slices only, got {type(key).__name__}")
        start, stop, _ = key.indices(len(self.a))
        if self.fail_at is not None and start <= self.fail_at < stop:
            raise OSError(f"disk on fire at row {self.fail_at}")
        self.reads.append(stop - start)
        return self.a[key].copy()


def _model(width=4):
    return xn.Sequential(xn.Linear(width, 8), xn.ReLU(), xn.Linear(8, 3))


def _fit(x, y, *, seed=0, epochs=2, batch_size=16, **kw):
    """A fresh model (initial weights seeded) trained on ``(x, y)``: its parameters on the
    host and the History."""
    xn.seed(seed)
    model = _model()
    h = xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
               epochs=epochs, batch_size=batch_size, progress=False, seed=7, **kw)
    return [xn.to_numpy(p.value).copy() for p in model.parameters()], h, model


def _same_steps(a, b):
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p, q)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "xpnet-prefetch" and t.is_alive()]


def _no_prefetch_thread_left(timeout=3.0):
    end = time.monotonic() + timeout
    while _prefetch_threads() and time.monotonic() < end:
        time.sleep(0.01)
    assert not _prefetch_threads(), "a reader thread outlived fit"


# -- the same steps as in memory ----------------------------------------------------------
@pytest.mark.fit_level
@pytest.mark.parametrize("shuffle", [True, "blocks"])
def test_streamed_fit_takes_the_in_memory_steps(be, rng, tmp_path, shuffle):
    x, y = blobs(64, rng=rng, spread=0.4)  # whole batches: fewer shapes for JAX to compile
    xv, yv = blobs(16, rng=rng, spread=0.4)
    mx, my = _memmap(tmp_path / "x.bin", x), _memmap(tmp_path / "y.bin", y)
    mxv = _memmap(tmp_path / "xv.bin", xv)
    ref, h_ref, _ = _fit(x, y, shuffle=shuffle, validation_data=(xv, yv))
    mixed = [(mx, be.asarray(y))] if shuffle is True else []  # labels already on the device
    for xs, ys in [(mx, my), (SliceOnly(x), y), *mixed]:
        got, h, model = _fit(xs, ys, shuffle=shuffle, validation_data=(mxv, yv))
        _same_steps(ref, got)  # the same batches in the same order: bit for bit
        assert h["loss"] == h_ref["loss"] and h["val_loss"] == h_ref["val_loss"]
        assert h["accuracy"] == h_ref["accuracy"]
        assert_on(be, model.parameters()[0].value)
    _no_prefetch_thread_left()


@pytest.mark.fit_level
def test_streamed_evaluate_and_predict_agree(be, rng, tmp_path):
    x, y = blobs(70, rng=rng, spread=0.4)
    mx, my = _memmap(tmp_path / "x.bin", x), _memmap(tmp_path / "y.bin", y)
    xn.seed(0)
    model = _model()
    loss = xn.SoftmaxCrossEntropy()
    want = xn.evaluate(model, x, y, loss=loss, batch_size=16)
    for xs, ys in ((mx, my), (SliceOnly(x), SliceOnly(y))):
        assert xn.evaluate(model, xs, ys, loss=loss, batch_size=16) == want
        out = xn.predict(model, xs, batch_size=16)
        assert_on(be, out)
        np.testing.assert_array_equal(xn.to_numpy(out),
                                      xn.to_numpy(xn.predict(model, x, batch_size=16)))


def test_resumed_streamed_run_is_exact(rng, tmp_path):
    x, y = blobs(50, rng=rng, spread=0.4)
    mx = _memmap(tmp_path / "x.bin", x)
    with xn.use("numpy"):
        straight, _, _ = _fit(mx, y, epochs=3, shuffle=True)
        xn.seed(0)
        model = _model()
        opt = xn.SGD(model, lr=0.1)
        for epoch in range(3):  # one epoch per call, as after a restart from a checkpoint
            xn.fit(model, mx, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=epoch + 1,
                   initial_epoch=epoch, batch_size=16, progress=False, seed=7)
    _same_steps(straight, [p.value for p in model.parameters()])


def test_multi_input_graph_streams(rng, tmp_path):
    x, y = blobs(40, rng=rng, spread=0.4)
    a, b = x[:, :2].copy(), x[:, 2:].copy()
    ma, mb = _memmap(tmp_path / "a.bin", a), _memmap(tmp_path / "b.bin", b)

    def run(xs):
        xn.seed(0)
        ia, ib = xn.Input(shape=(2,)), xn.Input(shape=(2,))
        out = xn.Linear(4, 3)(xn.Concat(axis=1)(ia, ib))
        model = xn.Graph(inputs=[ia, ib], outputs=out)
        xn.fit(model, xs, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
               epochs=2, batch_size=8, progress=False, seed=1)
        return [p.value.copy() for p in model.parameters()]

    with xn.use("numpy"):
        _same_steps(run([a, b]), run([ma, mb]))


def test_streamed_token_ids_stay_integers(rng, tmp_path):
    ids = rng.integers(0, 10, size=(30, 5))
    y = rng.integers(0, 2, size=30)
    mids = _memmap(tmp_path / "ids.bin", ids)

    def run(xs):
        xn.seed(0)
        model = xn.Sequential(xn.Embedding(10, 3), xn.Flatten(), xn.Linear(15, 2))
        xn.fit(model, xs, y, loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
               epochs=1, batch_size=8, progress=False, seed=1)
        return [p.value.copy() for p in model.parameters()]

    with xn.use("numpy"):
        _same_steps(run(ids), run(mids))


# -- the order and the reads ------------------------------------------------------------------
def test_block_order_is_a_seeded_permutation_of_runs():
    n, block = 103, 8
    rows = data_mod.block_order(n, seed=3, epoch=1, block=block)
    assert sorted(rows.tolist()) == list(range(n))
    p = 0
    while p < n:  # whole blocks one after another: a multiple of block, and its rows
        start = int(rows[p])
        assert start % block == 0
        size = min(block, n - start)
        np.testing.assert_array_equal(rows[p:p + size], np.arange(start, start + size))
        p += size
    np.testing.assert_array_equal(rows, data_mod.block_order(n, 3, 1, block))
    assert not np.array_equal(rows, data_mod.block_order(n, 3, 2, block))
    np.testing.assert_array_equal(data_mod.order("blocks", n, 3, 1, 32), rows)  # 32 / 4
    np.testing.assert_array_equal(data_mod.order(True, n, 3, 1, 32),
                                  data_mod.epoch_order(n, 3, 1))
    assert data_mod.order(False, n, 3, 1, 32) is None


@pytest.mark.parametrize("shuffle,most_reads", [(False, 1), ("blocks", 5), (True, 16)])
def test_slice_only_data_is_read_in_batch_sized_runs(rng, shuffle, most_reads):
    x, y = blobs(64, rng=rng, spread=0.4)
    xs = SliceOnly(x)
    with xn.use("numpy"):
        _fit(xs, y, epochs=1, batch_size=16, shuffle=shuffle)
    probe, reads = xs.reads[0], xs.reads[1:]  # the first row (for shapes), then batches
    assert probe == 1
    assert sum(reads) == 64 and max(reads) <= 16  # each row once, never the whole
    assert len(reads) <= 4 * most_reads  # 4 batches, in few runs each unless shuffled


def test_memmap_fit_keeps_anonymous_memory_flat(tmp_path):
    """One epoch over a 64 MB memmap (and memmapped labels) grows anonymous memory by a
    few batches at most (the rows read sit in the page cache, which is file-backed),
    while the same fit on the data loaded into memory holds a copy of it."""
    rows, width, batch = 65536, 256, 1024  # 64 MiB of float32; 1 MiB per batch
    path = tmp_path / "big.bin"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, width))
    chunk = np.random.default_rng(0).random((4096, width), dtype=np.float32)
    for s in range(0, rows, len(chunk)):
        mm[s:s + len(chunk)] = chunk
    mm.flush()
    del mm
    x = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, width))
    y = _memmap(tmp_path / "labels.bin", np.arange(rows, dtype=np.int64) % 10)
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(width, 10))
        opt = xn.SGD(model, lr=0.01)

        def growth(data, labels):
            xn.fit(model, data[:4 * batch], labels[:4 * batch], loss=xn.SoftmaxCrossEntropy(),
                   optimizer=opt, batch_size=batch, progress=False, seed=0)  # warm up
            before, peak = _rss_anon(), [0]
            done = threading.Event()

            def watch():
                while not done.is_set():
                    peak[0] = max(peak[0], _rss_anon())
                    time.sleep(0.002)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                xn.fit(model, data, labels, loss=xn.SoftmaxCrossEntropy(), optimizer=opt,
                       batch_size=batch, progress=False, seed=0)
            finally:
                done.set()
                watcher.join()
            return (max(peak[0], _rss_anon()) - before) / 2**20

        streamed = growth(x, y)
        in_memory = growth(np.array(x), np.array(y))  # loaded: one gather per epoch
    # streamed: a few 1 MiB batches (queued, being read, in the step) and the epoch's
    # order (0.5 MiB)
    assert streamed < 8, f"streaming grew anonymous memory by {streamed:.1f} MiB"
    assert in_memory > 48, f"the in-memory reference grew by {in_memory:.1f} MiB only"


def _rss_anon():
    """This process's resident anonymous memory in bytes (/proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pytest.skip("no /proc/self/status RssAnon on this system")


# -- iterables of batches --------------------------------------------------------------------
def _endless(x, y, batch_size):
    """A generator of consecutive batches, starting again at the end, forever."""
    while True:
        for s in range(0, len(x), batch_size):
            yield x[s:s + batch_size], y[s:s + batch_size]


@pytest.mark.fit_level
def test_generator_with_steps_per_epoch_takes_the_unshuffled_steps(be, rng):
    x, y = blobs(56, rng=rng, spread=0.4)
    ref, h_ref, _ = _fit(x, y, batch_size=16, shuffle=False, epochs=3)
    got, h, model = _fit(_endless(x, y, 16), None, steps_per_epoch=4, epochs=3)
    _same_steps(ref, got)
    assert h["loss"] == h_ref["loss"] and h["accuracy"] == h_ref["accuracy"]
    assert_on(be, model.parameters()[0].value)
    _no_prefetch_thread_left()


def test_reiterable_list_of_batches_restarts_each_epoch(rng):
    x, y = blobs(40, rng=rng, spread=0.4)
    batches = [(x[s:s + 16], y[s:s + 16]) for s in range(0, 40, 16)]
    with xn.use("numpy"):
        ref, h_ref, _ = _fit(x, y, batch_size=16, shuffle=False, epochs=2)
        got, h, _ = _fit(batches, None, epochs=2)  # len(batches) steps per epoch
        _same_steps(ref, got)
        assert h["samples_per_sec"][0] > 0 and h["loss"] == h_ref["loss"]
        # fewer steps than the list holds: the first batches of each epoch
        short, _, _ = _fit(batches, None, epochs=2, steps_per_epoch=1)
        once, _, _ = _fit(x[:16], y[:16], batch_size=16, epochs=2, shuffle=False)
        _same_steps(short, once)


@pytest.mark.fit_level
def test_torch_dataloader(be, rng):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    x, y = blobs(50, rng=rng, spread=0.4)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                        batch_size=16, shuffle=False)
    ref, h_ref, _ = _fit(x, y, batch_size=16, shuffle=False, epochs=2)
    got, h, model = _fit(loader, None, epochs=2)
    _same_steps(ref, got)
    assert h["loss"] == h_ref["loss"]
    assert_on(be, model.parameters()[0].value)


# -- errors -----------------------------------------------------------------------------------
def test_argument_errors(rng, tmp_path):
    x, y = blobs(20, rng=rng, spread=0.4)
    with xn.use("numpy"):
        model = _model()
        kw = dict(loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
                  progress=False)
        with pytest.raises(ValueError, match="steps_per_epoch"):
            xn.fit(model, _endless(x, y, 8), **kw)
        with pytest.raises(ValueError, match="y is missing"):
            xn.fit(model, x, **kw)
        with pytest.raises(ValueError, match="steps_per_epoch is for x given as an iterable"):
            xn.fit(model, x, y, steps_per_epoch=2, **kw)
        with pytest.raises(ValueError, match="shuffle must be True, False or 'blocks'"):
            xn.fit(model, x, y, shuffle="rows", **kw)
        with pytest.raises(TypeError, match=r"batch 1 .*expected an \(x, y\) pair"):
            xn.fit(model, iter([x, x]), steps_per_epoch=1, **kw)
        mx = _memmap(tmp_path / "x.bin", x)
        with pytest.raises(ValueError, match="x has 20 examples but y has 19"):
            xn.fit(model, mx, y[:19], **kw)
        wide = _memmap(tmp_path / "wide.bin", np.zeros((20, 5), np.float32))
        with pytest.raises(ValueError, match="Linear"):
            xn.fit(model, wide, y, **kw)


def test_iterable_batch_errors_name_the_batch(rng):
    x, y = blobs(40, rng=rng, spread=0.4)
    with xn.use("numpy"):
        model = _model()
        kw = dict(loss=xn.SoftmaxCrossEntropy(), optimizer=xn.SGD(model, lr=0.1),
                  progress=False)

        def bad_width():
            yield x[:8], y[:8]
            yield x[8:16], y[8:16]
            yield x[16:24, :3], y[16:24]

        with pytest.raises(ValueError, match=r"batch 3 .*x has examples of shape \(3,\), "
                                             r"the first batch \(4,\)"):
            xn.fit(model, bad_width(), steps_per_epoch=5, **kw)
        with pytest.raises(ValueError, match="x and y must hold the same number"):
            xn.fit(model, iter([(x[:8], y[:7])]), steps_per_epoch=1, **kw)
        with pytest.raises(ValueError, match="ran out of batches"):
            xn.fit(model, iter([(x[:8], y[:8])]), steps_per_epoch=1, epochs=2, **kw)
        _no_prefetch_thread_left()


def test_reader_thread_error_surfaces_and_the_thread_ends(rng):
    x, y = blobs(64, rng=rng, spread=0.4)
    with xn.use("numpy"):
        model = _model()
        with pytest.raises(OSError, match="disk on fire at row 40"):
            xn.fit(model, SliceOnly(x, fail_at=40), y, loss=xn.SoftmaxCrossEntropy(),
                   optimizer=xn.SGD(model, lr=0.1), batch_size=8, shuffle=False,
                   progress=False)
        with pytest.raises(OSError, match="disk on fire"):
            xn.predict(model, SliceOnly(x, fail_at=40), batch_size=8)
    _no_prefetch_thread_left()


class _FailingLoss(xn.SoftmaxCrossEntropy):
    """Raises on its ``fail_at``-th forward call."""

    def __init__(self, fail_at):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, pred, target):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the step failed")
        return super().forward(pred, target)


def test_an_error_in_the_step_ends_the_reader_thread(rng, tmp_path):
    x, y = blobs(400, rng=rng, spread=0.4)
    mx = _memmap(tmp_path / "x.bin", x)
    with xn.use("numpy"):
        model = _model()
        for data, extra in ((mx, {"y": y}), (_endless(x, y, 4), {"steps_per_epoch": 100})):
            start = time.monotonic()
            with pytest.raises(RuntimeError, match="the step failed"):
                xn.fit(model, data, loss=_FailingLoss(3), optimizer=xn.SGD(model, lr=0.1),
                       batch_size=4, progress=False, **extra)
            assert time.monotonic() - start < 5
            _no_prefetch_thread_left()


def test_prepare_gives_one_source_for_every_kind_of_data(tmp_path):
    """data.prepare: in-memory arrays, a memmap and an iterable of batches become one
    kind of Source (count, steps, the model's first output, the epoch's batches), and
    arrays and memmaps give the same batches for the same seed."""
    from xpnet import data

    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 4)).astype(np.float32)
    y = rng.integers(0, 3, 23)
    mx = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                   shape=x.shape)
    mx[:] = x
    with xn.use("numpy"):
        model = xn.Sequential(xn.Linear(4, 3))
        sources = [data.prepare(model, a, y, batch_size=5, shuffle=True) for a in (x, mx)]
        batches = [(x[i:i + 5], y[i:i + 5]) for i in range(0, 23, 5)]
        sources.append(data.prepare(model, batches, batch_size=5))
    for s in sources:
        assert isinstance(s, data.Source)
        assert (s.steps, s.outputs, tuple(s.first.shape)) == (5, 3, (1, 3))
        assert s.n in (23, 25)  # an iterable's count is its estimate: 5 batches of 5
    rows = []
    for s in sources[:2]:
        with s.batches(epoch=1, seed=4) as epoch:
            rows.append([(b[0].copy(), b[1].copy()) for _, b in epoch])
    for (xa, ya), (xb, yb) in zip(*rows, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match="x has 23 examples but y has 22"):
        data.prepare(model, x, y[:22])
