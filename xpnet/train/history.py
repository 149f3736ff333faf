"""History: the per-epoch metrics of a ``fit``, as lists, with JSON and PNG output."""

from __future__ import annotations

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
        or, without a path, returned as a matplotlib Figure (a notebook shows it).

        The figure is made without pyplot, so the user's matplotlib backend is never
        switched and no window opens."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError('History.plot needs matplotlib: pip install "xpnet[plot]"') from None
        panels = [k for k in ("loss", "accuracy") if k in self.history]
        fig = Figure(figsize=(5 * len(panels), 3.6))
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
