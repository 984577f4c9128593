"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Every output of i2dl (sample stores, maps, reports, tables, pictures, models) is written
under a temporary name in the destination folder, ``.<name>.tmp-<pid>-<8 hex>``, then
renamed with :func:`os.replace`, which is atomic on POSIX when both names are on one file
system (hence the same folder). A reader therefore sees either the previous version or the
new complete one, never a partial file; an interrupted write (``kill -9``) leaves at most a
hidden ``.tmp-`` (or ``.old-``) entry, which the next write does not reuse (random suffix)
and which :func:`remove_orphans` deletes once its writer process is gone. Writers that may
run concurrently on one target (two ``prepare`` of the same store, two ``infer`` into one
folder) serialise on :func:`target_lock` and clean up under it. A whole run folder is held
by one i2dl process at a time (:func:`run_folder_lock`: a second one stops at once). A
full disk or a file size limit while writing is explained by :func:`explain_disk_full`
(which file, how much space is free).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from i2dl.errors import ConfigError, I2dlError

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


#: The lock of a run folder, ``<run>/.i2dl-run.lock`` (:func:`run_folder_lock`).
RUN_LOCK = "i2dl-run"
#: Run folders this process holds: folder -> depth (the lock is re-entrant per process).
_HELD_RUNS: dict[Path, int] = {}
_HELD_RUNS_GUARD = threading.Lock()


@contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold a run folder for this process: a second i2dl process on it stops at once.

    Two processes writing one run folder (two ``train`` with the same ``hydra.run.dir``)
    would delete each other's checkpoints and mix their logs and maps. The lock file
    ``<folder>/.i2dl-run.lock`` (:func:`lock_path`, ``filelock`` without waiting) lets one
    in; the other is refused before it writes anything. This process may take the lock
    again while it holds it (``train`` runs the other stages inside it). The operating
    system releases the lock of a killed process; the lock file stays.

    Args:
        folder: the run folder (created if needed).

    Yields:
        The lock file path.

    Raises:
        ConfigError: another process holds the folder; the message names the folder, the
            lock file and the fix (wait, or another ``hydra.run.dir``).
    """
    folder = Path(folder).resolve()
    path = lock_path(folder / RUN_LOCK)
    with _HELD_RUNS_GUARD:
        depth = _HELD_RUNS.get(folder, 0)
        if depth:
            _HELD_RUNS[folder] = depth + 1
    if not depth:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ConfigError(
                f"the run folder {folder} is in use by another i2dl process (it holds the "
                f"lock {path}): two runs writing one folder would delete each other's "
                "checkpoints and mix their logs. Wait until that run ends, or give this one "
                "another folder (hydra.run.dir=...)"
            ) from None
        with _HELD_RUNS_GUARD:
            _HELD_RUNS[folder] = 1
    try:
        yield path
    finally:
        with _HELD_RUNS_GUARD:
            _HELD_RUNS[folder] -= 1
            last = _HELD_RUNS[folder] == 0
            if last:
                del _HELD_RUNS[folder]
        if last:
            lock.release()


#: ``errno`` of a full disk, an exhausted quota or the file size limit (``ulimit -f``).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class DiskFullError(I2dlError, OSError):
    """An output could not be written: no space left, quota or file size limit reached.

    Raised by :func:`explain_disk_full` with the file, the free space and the fix; its
    ``errno`` and ``filename`` are those of the original error.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def _human(n: int) -> str:
    """A byte count in words: ``1.5 GiB``."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _path_values(value: Any) -> list[str]:
    """The paths a variable names: a path, or an open file's ``path`` and ``name``."""
    if hasattr(value, "write"):  # an open file (fsspec's: ``path`` is the target)
        return [v for v in (getattr(value, "path", None), getattr(value, "name", None))
                if isinstance(v, str)]
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
        return [os.fspath(value)]
    return []


def _file_in_traceback(exc: BaseException, folders: list[Path]) -> str | None:
    """The file being written when ``exc`` was raised, from the failing frames' variables.

    Innermost frame first: a path (or an open file's path) under one of ``folders`` that
    is not a folder; else the innermost open file's name. None when no frame names one.
    """
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    roots = [str(f.absolute()) for f in folders]
    fallback = None
    for frame in reversed(frames[-40:]):
        for value in frame.f_locals.values():
            for text in _path_values(value):
                full = os.path.abspath(text)
                if any(full.startswith(r + os.sep) for r in roots) and not os.path.isdir(full):
                    return full
                if fallback is None and hasattr(value, "write") and os.sep in text:
                    fallback = text
    return fallback


def disk_full_message(exc: OSError, folders: Iterable[str | Path]) -> str:
    """What a full disk, quota or file size limit stopped, the space left and the fix.

    Args:
        exc: the error (``errno`` in :data:`DISK_FULL_ERRNOS`).
        folders: the output folders being written (run folder, store folder).

    Returns:
        The message: the file (from the error, else from the failing code's variables),
        the free space of each folder's file system, the file size limit when one is set.
    """
    paths = [Path(f) for f in folders]
    file = exc.filename or _file_in_traceback(exc, paths)
    what = f"writing {file}" if file else "writing the outputs in " + ", ".join(map(str, paths))
    if file and Path(file).is_file():
        what += f" (it had reached {_human(Path(file).stat().st_size)})"
    parts = [f"{what} failed: {exc.strerror or exc}."]
    seen: set[int] = set()
    for folder in paths:
        existing = folder.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        dev = existing.stat().st_dev
        if dev in seen:
            continue
        seen.add(dev)
        usage = shutil.disk_usage(existing)
        parts.append(f"{_human(usage.free)} free of {_human(usage.total)} on the file system "
                     f"of {folder}.")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        parts.append(f"This process may not write files over {_human(limit)} (ulimit -f): "
                     "raise the limit (ulimit -f unlimited).")
    parts.append("Free some space (or write elsewhere: hydra.run.dir=..., store.dir=...) and "
                 "rerun the same command: what was finished (sample store, checkpoints, map "
                 "windows) is reused.")
    return " ".join(parts)


@contextmanager
def explain_disk_full(folders: Iterable[str | Path]) -> Iterator[None]:
    """Turn a full disk, quota or file size limit while writing into a clear error.

    Args:
        folders: the output folders written inside the block (named with their free
            space in the message).

    Raises:
        DiskFullError: an ``OSError`` with ``errno`` ENOSPC, EFBIG or EDQUOT was raised
            inside the block (see :func:`disk_full_message`); other errors pass through.
    """
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        error = DiskFullError(exc.errno, disk_full_message(exc, list(folders)))
        error.filename = exc.filename
        raise error from exc


def input_stamps(paths: Iterable[Any], max_files: int = 100_000) -> dict[str, list[int]]:
    """The identity of input files: resolved path -> ``[size, mtime_ns]``.

    A changed file (rewritten, replaced, touched) gets another stamp, which makes the
    resume keys built on it (maps, :mod:`i2dl.maps.engine`) start afresh. A folder (named
    with a ``/``, not a bare name) stands for the files under it (a sensor product);
    values that are not existing paths (any string of a config) are skipped.

    Args:
        paths: candidate paths (str or path-like; other values are ignored).
        max_files: at most this many files are stamped per folder (then the folder's
            own stamp stands for the rest).

    Returns:
        One entry per existing file, sorted by path.
    """
    stamps: dict[str, list[int]] = {}

    def add(path: Path) -> None:
        st = path.stat()
        stamps[str(path)] = [st.st_size, st.st_mtime_ns]

    for value in paths:
        if not isinstance(value, str | os.PathLike) or not str(value).strip():
            continue
        try:
            path = Path(value).resolve()
            if path.is_file():
                add(path)
            elif path.is_dir() and os.sep in str(value).rstrip(os.sep):  # not "." or a name
                add(path)
                for n, child in enumerate(sorted(path.rglob("*"))):
                    if n >= max_files:
                        break
                    if child.is_file():
                        add(child)
        except (OSError, ValueError):  # not a path (a long name, a NUL), or unreadable
            continue
    return dict(sorted(stamps.items()))


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
