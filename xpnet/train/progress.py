"""Progress: a tqdm bar on a terminal, one line per epoch otherwise, or nothing."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A tqdm bar on a terminal, one line per epoch otherwise, or nothing."""

    def __init__(self, progress: Any, epochs: int, steps: int):
        if progress is None or progress is True:
            progress = "bar" if sys.stderr.isatty() else "lines"
        if progress == "bar":
            try:
                import tqdm  # noqa: F401
            except ImportError:
                progress = "lines"
        self.mode, self.epochs, self.steps, self.bar = progress, epochs, steps, None

    def start(self, epoch: int) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}",
                            leave=True, dynamic_ncols=True, unit="step")

    def step(self, n: int, postfix: dict[str, float] | None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)

    def end(self, epoch: int, logs: dict[str, float]) -> None:
        text = "  ".join(f"{k} {v:.4f}" if k != "samples_per_sec" else f"{k} {v:,.0f}"
                         for k, v in logs.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.close()
        elif self.mode == "lines":
            print(f"epoch {epoch + 1}/{self.epochs}  {text}", flush=True)
