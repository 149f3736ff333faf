"""History: the per-epoch metrics of a ``fit``, as lists, with JSON and PNG output."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any


class History:
    """Per-epoch metrics of a ``fit``: ``history["loss"]``, ``history["val_accuracy"]``...

    Keys: ``loss``, ``accuracy`` (classification only), ``val_loss``,
    ``val_accuracy`` (with validation data), ``time`` (seconds per epoch) and
    ``samples_per_sec``; ``epochs`` lists the epoch numbers (0-based).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epochs.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def keys(self):
        return self.history.keys()

    def to_json(self, path: str | Path) -> None:
        """Write ``{"epochs": [...], "loss": [...], ...}`` to ``path``."""
        Path(path).write_text(json.dumps({"epochs": self.epochs, **self.history}, indent=1))

    def plot(self, path: str | Path | None = None) -> Any:
        """The loss and accuracy curves (needs matplotlib): written to ``path`` as a PNG,
        or, without a path, returned as a matplotlib Figure that a notebook displays.

        The figure is made without pyplot, so the user's matplotlib backend is never
        switched and no window opens. Jupyter shows a figure as an image only through a
        display formatter, which matplotlib's inline backend registers when pyplot is
        imported (or after ``%matplotlib inline``); in a fresh kernel that has not
        happened, and a plain Figure shows as ``<Figure ...>``. The Figure returned here
        has its own ``_repr_png_``, so it shows as a picture either way."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError('History.plot needs matplotlib: pip install "xpnet[plot]"') from None
        panels = [k for k in ("loss", "accuracy") if k in self.history]
        fig = _figure_class(Figure)(figsize=(5 * len(panels), 3.6))
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, key in zip(axes[0], panels, strict=True):
            for name in (key, "val_" + key):
                if name in self.history:
                    ax.plot([e + 1 for e in self.epochs], self.history[name], label=name)
            ax.set_xlabel("epoch")
            ax.set_title(key)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        if path is None:
            return fig
        fig.savefig(path, dpi=100)
        return None

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History({len(self.epochs)} epochs, last={last})"


_CurvesFigure: type | None = None


def _figure_class(figure: type) -> type:
    """A matplotlib Figure that IPython displays as a PNG (``_repr_png_``) without a
    formatter of matplotlib's inline backend; made once, when matplotlib is first
    needed (it is an optional dependency)."""
    global _CurvesFigure
    if _CurvesFigure is None:
        class CurvesFigure(figure):
            """History.plot's figure: a matplotlib Figure that shows itself in notebooks."""

            def _repr_png_(self) -> bytes:
                buffer = io.BytesIO()
                self.savefig(buffer, format="png", dpi=100)  # Agg: no pyplot, no window
                return buffer.getvalue()

        _CurvesFigure = CurvesFigure
    return _CurvesFigure
