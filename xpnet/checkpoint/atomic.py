"""Writing a file atomically: to a temporary file of its own in the same folder, fsynced,
then renamed over the target, so a failure at any point leaves the previous file as it
was; and removing the temporary files of saves that were killed before the rename."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Replace ``path`` with what ``write`` writes to the open file it is given.

    Saves from several threads or processes to one path never mix: each writes a
    temporary file of its own, and the last rename wins.
    """
    folder = path.parent if str(path.parent) else Path(".")
    remove_stale_temps(folder, path.name)
    # one name per call: saves from two threads (or processes) must never share a file
    tmp = folder / (f".{path.name}.{os.getpid()}.{threading.get_ident()}."
                    f"{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_stale_temps(folder: Path, name: str) -> None:
    """Delete ``.<name>.<pid>...tmp`` files whose writing process no longer exists.

    A save killed between writing and renaming leaves its temporary file behind; a
    live process's file (this one's included: another thread may be writing it) is kept.
    """
    if os.name != "posix":  # os.kill(pid, 0) sends CTRL_C_EVENT on Windows
        return
    prefix = f".{name}."
    try:
        entries = [e.name for e in os.scandir(folder)]
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid_text = entry[len(prefix):-len(".tmp")].split(".")[0]
        if not (pid_text.isascii() and pid_text.isdigit()) or int(pid_text) <= 0:
            continue  # not one of ours; pid 0 would signal our own process group
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            (folder / entry).unlink(missing_ok=True)
        except (OSError, OverflowError):
            pass  # alive under another user (EPERM), or not a pid at all: keep it
