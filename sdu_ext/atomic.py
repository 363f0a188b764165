"""Atomic file writes.

A file is written to a temporary name in the destination's directory, flushed and
fsync'ed, then renamed over the destination with ``os.replace`` (atomic on POSIX and
Windows), and the directory is fsync'ed. A process killed at any moment therefore
leaves either the previous file or the new one, never a torn one; a leftover
temporary file is ignored and removed by the next successful write.
"""
import glob
import os


def _tmp_prefix(path):
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.tmp")


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data, path):
    """Write ``data`` (bytes) to ``path`` atomically (see the module docstring)."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    prefix = _tmp_prefix(path)
    tmp = f"{prefix}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    for stale in glob.glob(glob.escape(prefix) + ".*"):
        try:
            os.remove(stale)
        except OSError:
            pass
