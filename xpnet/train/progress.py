"""Progress: a tqdm bar on a terminal, one line per epoch otherwise, or nothing."""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import Any, TextIO

#: The widest bar drawn, and the width used when the terminal reports none (a 0x0 pty).
BAR_WIDTH = 80
#: Every epoch line is shorter than this: an 80-column terminal does not wrap it.
LINE_WIDTH = 80


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
        self.columns: list[str] | None = None  # the table's columns, once its header is out

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
            if postfix:  # the running loss and metrics, by their full names
                self.bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()},
                                     refresh=False)

    def end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.mode is False:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        stream = self.stream or sys.stdout  # results on stdout: `xpnet train | tee log`
        for line in self.lines(epoch, logs):
            print(line, file=stream, flush=True)

    def lines(self, epoch: int, logs: dict[str, float]) -> list[str]:
        """The epoch's results as lines under 80 columns: a row of a table whose header
        comes first (and again if the columns change) when every column fits, else
        ``name value`` pairs wrapped under the first. Times in seconds with a unit."""
        where = f"{epoch + 1}/{self.epochs}"
        cells = [(k, _value(k, v)) for k, v in logs.items()]
        widths = [max(len(_heading(k)), len(v), 8) for k, v in cells]
        first = len(f"epoch {self.epochs}/{self.epochs}")
        if first + sum(w + 2 for w in widths) < LINE_WIDTH:
            out = []
            keys = [k for k, _ in cells]
            if keys != self.columns:
                self.columns = keys
                out.append(" " * first + "".join(
                    f"  {_heading(k):>{w}}" for k, w in zip(keys, widths, strict=True)))
            where = f"epoch {where}"
            out.append(f"{where:<{first}}" + "".join(
                f"  {v:>{w}}" for (_, v), w in zip(cells, widths, strict=True)))
            return out
        # a no-break space inside each pair, so a name and its value stay on one line
        pairs = [v.replace(" ", "\xa0") if k == "time" else
                 f"{v}\xa0samples/s" if k == "samples_per_sec" else f"{k}\xa0{v}"
                 for k, v in cells]
        lines = textwrap.wrap("  ".join(pairs), LINE_WIDTH - 1,
                              initial_indent=f"epoch {where}  ",
                              subsequent_indent=" " * (len(f"epoch {where}") + 2),
                              break_on_hyphens=False)
        return [line.replace("\xa0", " ") for line in lines]


def _heading(key: str) -> str:
    return "samples/s" if key == "samples_per_sec" else key


def _value(key: str, value: float) -> str:
    if key == "time":  # three figures or so, always with a unit
        return (f"{value:.0f} s" if value >= 100 else f"{value:.2f} s" if value >= 0.1
                else f"{value * 1000:.1f} ms")
    if key == "samples_per_sec":
        return f"{value:,.0f}"
    return f"{value:.4f}"
