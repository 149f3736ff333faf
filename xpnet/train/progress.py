"""Progress: a tqdm bar on a terminal, one line per epoch otherwise, or nothing."""

from __future__ import annotations

import shutil
import sys
from typing import Any, TextIO

#: The widest bar drawn, and the width used when the terminal reports none (a 0x0 pty).
BAR_WIDTH = 80


class Progress:
    """A short tqdm bar while an epoch runs (running loss and accuracy only), then the
    epoch's full summary as a line of its own; without a terminal, just the lines.

    ``progress``: None or True (a bar on a terminal, else lines), "bar", "lines", or
    False (silent). ``stream``: where to write (default: standard error for the bar,
    standard output for the lines).
    """

    def __init__(self, progress: Any, epochs: int, steps: int, stream: TextIO | None = None):
        if progress is None or progress is True:
            progress = "bar" if (stream or sys.stderr).isatty() else "lines"
        if progress == "bar":
            try:
                import tqdm  # noqa: F401
            except ImportError:
                progress = "lines"
        if progress not in ("bar", "lines", False):
            raise ValueError(f"fit: progress must be None, True, False, 'bar' or 'lines', "
                             f"got {progress!r}")
        self.mode, self.epochs, self.steps, self.bar = progress, epochs, steps, None
        self.stream = stream

    def start(self, epoch: int) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm

            columns = shutil.get_terminal_size((BAR_WIDTH, 24)).columns
            width = columns if 20 <= columns <= BAR_WIDTH else BAR_WIDTH
            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}",
                            leave=False, ncols=width, dynamic_ncols=False, unit="step",
                            file=self.stream or sys.stderr)

    def step(self, n: int, postfix: dict[str, float] | None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                short = {k[:3]: f"{v:.3f}" for k, v in postfix.items()}  # loss, acc
                self.bar.set_postfix(short, refresh=False)

    def end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.mode is False:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        text = "  ".join(f"{k} {v:.4f}" if k != "samples_per_sec" else f"{k} {v:,.0f}"
                         for k, v in logs.items())
        print(f"epoch {epoch + 1}/{self.epochs}  {text}", flush=True,
              file=self.stream or (sys.stderr if self.mode == "bar" else sys.stdout))
