"""Writing a file so that readers see the old bytes or the new, never half."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(target: Path, data: bytes, *, mode: int = 0o600, fsync: bool = True) -> Path:
    """Write ``data`` to a temp file beside ``target``, chmod it, fsync it, rename it over ``target``."""
    import tempfile  # not at import: the loader reads files through this module and --help pays for nothing

    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def regular_file_or_absent(target: Path) -> str | None:
    """Why an output must not be written at ``target`` (a symlink, a device, a FIFO, a directory), or None.

    A report path given on the command line replaces whatever is there; it must only ever replace a
    regular file, never follow a link planted there or clobber a device.
    """
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{target}: {exc.strerror}"
    import stat

    if stat.S_ISLNK(st.st_mode):
        return f"{target} is a symbolic link: not followed"
    if not stat.S_ISREG(st.st_mode):
        return f"{target} is not a regular file"
    return None


def read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit`` of them (a larger file is refused).

    A FIFO, a device or a directory is refused before anything is read: reading a FIFO would wait
    forever.  Raises OSError (``errno`` 0 for a refusal of ours) with the reason.
    """
    import stat

    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file")
        if st.st_size > limit:
            raise OSError(0, f"{st.st_size} bytes: larger than it can be ({limit})")
        return fh.read(limit + 1)
