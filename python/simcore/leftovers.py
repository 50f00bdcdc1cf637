"""Temporaries a killed writer leaves (NAME.tmp-PID...): whether their writer is gone.
Torch-free, for the data generator as well as the caches and the CLI."""
from __future__ import annotations

import os


def writer_gone(pid: int) -> bool:
    """True when no process `pid` runs on this machine, so a temporary named after it is an
    orphan. This process, a live one, another user's or an impossible pid: False (kept)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # PermissionError: alive, another user's
        return False
    return False
