"""Temporary files written beside their final name (then renamed onto it), and removing the ones
a killed process left: a writer holds an advisory lock on its temporary file while it writes, so a
temporary file nobody holds (and not brand new) belongs to a process that is gone.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale files are then told by age alone
    fcntl = None  # type: ignore[assignment]

#: How a temporary file of the forest cache ends (``np.savez`` keeps a name ending in ``.npz``).
TMP_SUFFIX = ".tmp.npz"
#: A temporary file younger than this is never removed: its writer may be between creating and locking it.
MIN_AGE_S = 60.0
#: Without advisory locks (Windows), only temporary files older than this are taken for stale.
UNLOCKED_MIN_AGE_S = 24 * 3600.0


@contextlib.contextmanager
def writing(final: Path, suffix: str = TMP_SUFFIX) -> Iterator[Path]:
    """A fresh temporary path beside ``final``, locked while the block writes it, then renamed onto
    ``final``; on an error (or Ctrl-C) the temporary file is removed and ``final`` is left as it was."""
    tmp = final.with_name(f"{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield tmp
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    finally:
        os.close(fd)


def remove_stale(folder: Path, pattern: str = "*" + TMP_SUFFIX, *, min_age: float = MIN_AGE_S) -> list[Path]:
    """Remove the temporary files in ``folder`` that no live writer holds (and older than ``min_age``
    seconds). A file another process is writing is locked by it and kept. Returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in sorted(folder.glob(pattern)):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime < (min_age if fcntl is not None else max(min_age, UNLOCKED_MIN_AGE_S)):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:  # a live process is writing it
                        continue
                if os.fstat(fd).st_ino != os.stat(p).st_ino:  # renamed or replaced meanwhile
                    continue
                p.unlink()
                removed.append(p)
            finally:
                os.close(fd)
    return removed
