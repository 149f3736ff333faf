"""Running sums of the loss and of correct predictions, kept on the device.

Each step adds device scalars; nothing is read back until :meth:`Metrics.read`, which
``fit`` calls at its reporting interval and once per epoch.
"""

from __future__ import annotations

from typing import Any

from ..backend import to_numpy
from ..losses import Loss


class Metrics:
    """Sums of ``loss * examples`` and of correct predictions over the batches seen.

    Accuracy is hits over the predictions judged: one per example, or one per position
    for sequence targets (logits ``(n, L, k)`` with labels ``(n, L)``: per-token
    accuracy), as ``loss.positions`` says.

    Parameters
    ----------
    loss : Loss or None
        What ``cost`` values come from, and whose ``correct`` counts hits.
    count_hits : bool
        Whether to count correct predictions (classification accuracy).
    one_hot : bool
        Targets are integer labels that ``loss.encode_targets`` turned into one-hot rows.
    """

    def __init__(self, loss: Loss | None, count_hits: bool = True, one_hot: bool = False):
        self.judge = loss if loss is not None else Loss()
        self.count_hits, self.one_hot = count_hits, one_hot
        self.loss_sum: Any = None
        self.hits: Any = None
        self.seen = 0
        self.judged = 0  # predictions that ``hits`` counts over: examples or positions

    def add(self, pred: Any, target: Any, cost: Any, n: int) -> None:
        """Add one batch of ``n`` examples: its mean ``cost`` (None: no loss) and hits."""
        if cost is not None:
            c = cost * n
            self.loss_sum = c if self.loss_sum is None else self.loss_sum + c
        if self.count_hits:
            h = self.judge.correct(pred, target, one_hot=self.one_hot)
            if h is not None:
                self.hits = h if self.hits is None else self.hits + h
                self.judged += n * self.judge.positions(pred)
        self.seen += n

    def read(self) -> tuple[float | None, float | None]:
        """``(loss sum, hit count)`` on the host, None where nothing was summed."""
        loss = float(to_numpy(self.loss_sum)) if self.loss_sum is not None else None
        hits = float(to_numpy(self.hits)) if self.hits is not None else None
        return loss, hits

    def means(self) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ...}`` over the examples (for accuracy: the
        predictions judged) seen so far."""
        loss, hits = self.read()
        out = {}
        if loss is not None:
            out["loss"] = loss / max(self.seen, 1)
        if hits is not None:
            out["accuracy"] = hits / max(self.judged, 1)
        return out
