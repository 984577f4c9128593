"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Every output of i2dl (sample stores, maps, reports, tables, pictures, models) is written
under a temporary name in the destination folder, ``.<name>.tmp-<pid>-<8 hex>``, then
renamed with :func:`os.replace`, which is atomic on POSIX when both names are on one file
system (hence the same folder). A reader therefore sees either the previous version or the
new complete one, never a partial file; an interrupted write (``kill -9``) leaves at most a
hidden ``.tmp-`` (or ``.old-``) entry, which the next write does not reuse (random suffix)
and which :func:`remove_orphans` deletes once its writer process is gone. Writers that may
run concurrently on one target (two ``prepare`` of the same store, two ``infer`` into one
folder) serialise on :func:`target_lock` and clean up under it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

#: Marker in the name of every temporary file or folder (``.<name>.tmp-<pid>-<8 hex>``).
TMP_MARKER = ".tmp-"
#: Marker of a previous version moved aside while a folder is replaced.
OLD_MARKER = ".old-"
#: A temporary (or moved-aside) entry whose name carries no writer pid (older i2dl) is an
#: orphan once it is this old, seconds.
ORPHAN_AGE_S = 3600.0


def not_writable(folder: str | Path) -> str | None:
    """Why no file can be written in ``folder`` (or, if absent, created there), or None.

    A file is created and removed in the folder, or in its nearest existing parent when
    it does not exist yet: permission bits, read-only mounts and immutable folders all
    show (``os.access`` misses the last two, and everything for root).

    Args:
        folder: the output folder.

    Returns:
        None when writable, else the reason in words.
    """
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
    except OSError as exc:
        where = "" if existing == Path(folder).absolute() else f" (its parent {existing})"
        return f"the folder{where} is not writable: {exc.strerror}"
    os.close(fd)
    os.unlink(probe)
    return None


def temporary_name(final: str | Path, marker: str = TMP_MARKER) -> Path:
    """A fresh hidden temporary path beside ``final``: ``<folder>/.<name>.tmp-<pid>-<8 hex>``.

    Args:
        final: the destination path.
        marker: :data:`TMP_MARKER` (a new version) or :data:`OLD_MARKER` (a previous one
            moved aside).

    Returns:
        A path in the same folder that does not collide with concurrent writers; the
        writer's process id in the name lets :func:`remove_orphans` tell a live writer's
        temporary from a killed one's.
    """
    final = Path(final)
    return final.with_name(f".{final.name}{marker}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (permission errors count as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_orphans(final: str | Path) -> list[Path]:
    """Delete the temporaries that killed writers of ``final`` left beside it.

    An entry ``.<name>.tmp-<pid>-<hex>`` or ``.<name>.old-<pid>-<hex>`` of the same target
    is removed when process ``pid`` no longer runs (another target's temporaries, and a
    live writer's, are kept); an entry of an older i2dl (no pid in the name) when it is
    older than :data:`ORPHAN_AGE_S`. Call it while holding :func:`target_lock` of
    ``final``, so that no concurrent writer of the same target can be mid-write.

    Args:
        final: the destination path whose orphans are looked for.

    Returns:
        The removed paths.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(
        rf"^\.{re.escape(final.name)}(?:{re.escape(TMP_MARKER)}|{re.escape(OLD_MARKER)})"
        r"(?:(\d+)-)?[0-9a-f]{8}$"
    )
    removed = []
    for entry in final.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = match.group(1)
        if pid is not None:
            orphan = int(pid) != os.getpid() and not _pid_alive(int(pid))
        else:
            try:
                orphan = time.time() - entry.lstat().st_mtime > ORPHAN_AGE_S
            except OSError:
                continue
        if orphan:
            _remove(entry)
            removed.append(entry)
    if removed:
        log.info("removed %d temporary file(s) of %s left by a killed run: %s", len(removed),
                 final, ", ".join(p.name for p in removed))
    return removed


def lock_path(final: str | Path) -> Path:
    """The lock file of a target: ``<folder>/.<name>.lock``."""
    final = Path(final)
    return final.with_name(f".{final.name}.lock")


@contextmanager
def target_lock(final: str | Path, timeout: float = -1) -> Iterator[Path]:
    """Hold the inter-process lock of ``final`` (``filelock``), then clean its orphans.

    A second process asking for the same target waits until the first one is done (and
    then finds its complete output). The lock file stays (deleting it would race); the
    operating system releases the lock of a killed process.

    Args:
        final: the destination path.
        timeout: seconds to wait; -1 waits forever.

    Yields:
        The lock file path.

    Raises:
        filelock.Timeout: the lock was not obtained within ``timeout``.
    """
    path = lock_path(final)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.info("waiting for another process writing %s (lock %s)", final, path)
        lock.acquire()
    try:
        remove_orphans(final)
        yield path
    finally:
        lock.release()


def _remove(path: Path) -> None:
    """Remove a file or folder if it exists (errors ignored: best-effort clean-up)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; a folder replaces an existing folder with no partial state.

    ``os.replace`` cannot replace a non-empty folder, so an existing folder is first moved
    aside to ``.<name>.old-<pid>-<8 hex>`` (one rename), the new one renamed in (a second), and
    the old one deleted. Between the two renames ``final`` is briefly absent, never partial.
    """
    if tmp.is_dir() and final.is_dir() and not final.is_symlink():
        old = temporary_name(final, OLD_MARKER)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)  # put the previous version back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Write to a temporary path, renamed to ``final`` when the block succeeds.

    The caller creates the file (or folder, e.g. a Zarr store) at the yielded path and
    closes it inside the block. On success it replaces ``final`` (a folder replaces a
    folder, see :func:`_replace`); on any exception (``KeyboardInterrupt`` included) the
    temporary is removed and ``final`` is left untouched. The destination folder is
    created with its parents.

    Example::

        with atomic_path(out / "classif.tif") as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(data)

    Args:
        final: the destination file or folder.

    Yields:
        The temporary path, ``<folder>/.<name>.tmp-<pid>-<8 hex>`` (nothing exists there yet).

    Raises:
        OSError: the folder cannot be created, or the rename fails (e.g. ``final`` is a
            non-empty folder and the temporary a file).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        yield tmp
        _replace(tmp, final)
    finally:
        _remove(tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, ``fsync``, ``os.replace``).

    Args:
        path: destination file; its folder is created if needed.
        data: the whole content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the folder cannot be created or written.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`).

    Args:
        path: destination file; its folder is created if needed.
        text: the whole content (newlines written as given).
        encoding: text encoding.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the folder cannot be created or written.
    """
    return write_bytes_atomic(path, text.encode(encoding))
