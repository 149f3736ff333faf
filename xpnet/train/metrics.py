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

    def add(self, pred: Any, target: Any, cost: Any, n: int) -> None:
        """Add one batch of ``n`` examples: its mean ``cost`` (None: no loss) and hits."""
        if cost is not None:
            c = cost * n
            self.loss_sum = c if self.loss_sum is None else self.loss_sum + c
        if self.count_hits:
            h = self.judge.correct(pred, target, one_hot=self.one_hot)
            if h is not None:
                self.hits = h if self.hits is None else self.hits + h
        self.seen += n

    def read(self) -> tuple[float | None, float | None]:
        """``(loss sum, hit count)`` on the host, None where nothing was summed."""
        loss = float(to_numpy(self.loss_sum)) if self.loss_sum is not None else None
        hits = float(to_numpy(self.hits)) if self.hits is not None else None
        return loss, hits

    def means(self) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ...}`` over the examples seen so far."""
        loss, hits = self.read()
        out = {}
        if loss is not None:
            out["loss"] = loss / max(self.seen, 1)
        if hits is not None:
            out["accuracy"] = hits / max(self.seen, 1)
        return out
