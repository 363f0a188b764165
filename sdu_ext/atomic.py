"""Atomic file writes, safe under concurrency, and files framed with a SHA-256 digest.

A file is written to a temporary name in the destination's directory, flushed and
fsync'ed, then renamed over the destination with ``os.replace`` (atomic on POSIX and
Windows), and the directory is fsync'ed. A process killed at any moment therefore
leaves either the previous file or the new one, never a torn one.

Temporary names are ``.<name>.tmp.<host>.<pid>.<token>``: unique per write, so several
processes (or threads) can write the same destination at once and the last rename wins;
each writer removes only its own temporary file. A leftover of a killed writer is removed
by a later write once it is stale: its writer (a process on this host) is no longer
running, or, written on another host, it predates this process and is older than
:data:`STALE_SECONDS`. A live writer's file is never touched.
"""
import glob
import hashlib
import os
import socket
import time
import uuid

__all__ = ["atomic_write_bytes", "write_framed", "read_framed", "STALE_SECONDS"]

STALE_SECONDS = 24 * 3600
_STARTED = time.time()
_HOST = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:64] or "host"


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


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def _stale(path, prefix):
    """Whether the temporary file ``path`` is a leftover that no live writer owns: its writer on
    this host is no longer running, or (another host's) it predates this process and is older
    than :data:`STALE_SECONDS`."""
    parts = path[len(prefix) + 1:].split(".")
    if len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit():
        return int(parts[1]) != os.getpid() and not _running(int(parts[1]))
    if len(parts) == 1 and parts[0].isdigit():  # the old name, .<name>.tmp.<pid>, on this host
        return int(parts[0]) != os.getpid() and not _running(int(parts[0]))
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return False
    return mtime < _STARTED and time.time() - mtime > STALE_SECONDS


def atomic_write_bytes(data, path):
    """Write ``data`` (bytes) to ``path`` atomically (see the module docstring)."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    prefix = _tmp_prefix(path)
    tmp = f"{prefix}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}"
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
    for leftover in glob.glob(glob.escape(prefix) + ".*"):
        if _stale(leftover, prefix):
            try:
                os.remove(leftover)
            except OSError:
                pass


def write_framed(data, path, magic):
    """Write ``magic + sha256(data).hexdigest() + b"\\n" + data`` atomically to ``path``."""
    atomic_write_bytes(magic + hashlib.sha256(data).hexdigest().encode() + b"\n" + data, path)


def read_framed(raw, magic):
    """The body of bytes written by :func:`write_framed` with ``magic``. Raises ValueError
    saying what is wrong: no header (another kind of file), or a digest that does not match
    (a truncated or corrupted file)."""
    if not raw.startswith(magic):
        raise ValueError("it does not start with the expected header")
    nl = raw.find(b"\n", len(magic))
    digest = raw[len(magic):nl] if nl >= 0 else b""
    if len(digest) != 64:
        raise ValueError("its header is damaged")
    body = raw[nl + 1:]
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise ValueError("its SHA-256 digest does not match its contents (truncated or corrupted)")
    return body
