"""Files of a run folder: names that never collide, one writer per folder, nothing overwritten.

    runs/<name>/  best.ckpt  last.ckpt  config.yaml  logs/  test_metrics.json  ranks.npz   (zoo fit)
                  test-<YYYYmmdd-HHMMSS>[-N].json  ranks-<same stamp>.npz                  (zoo test)
                  predictions-<stamp>.csv                                                  (zoo predict)

* :func:`stamped_path` picks a new timestamped name; :func:`write_new` publishes a file under
  such a name atomically and without replacing anything (a hard link fails if the name exists).
* :class:`RunLock` makes a fit the only writer of its folder (``.zoo.lock``, an ``fcntl`` lock
  released by the kernel when the process dies; the pid inside names the holder).
* :func:`check_fit_folder` refuses to start a fit over a finished run unless told to.
* :func:`atomic_write` is the one way the zoo writes a file: whole or not at all.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

LOCK_NAME = ".zoo.lock"
CLAIM_NAME = ".reproduce.lock"  # held by a `zoo reproduce`/`ablate` process while its fit of the folder runs
FIT_FILES = ("best.ckpt", "last.ckpt", "test_metrics.json", "ranks.npz")  # what a fit writes at the top level
_STAMP = re.compile(r"^(?P<prefix>[A-Za-z_]+)-(?P<stamp>\d{8}-\d{6}(?:-\d+)?)$")


def atomic_write(path: str | Path, data: str | bytes | Callable[[BinaryIO], None], *, fsync: bool = False) -> Path:
    """Publish ``path`` whole or not at all: write a temporary file in the same folder, then
    ``os.replace`` it over ``path``.  A crash or an exception at any point leaves the previous
    file (or none) and no temporary file.

    ``data``: text (written as UTF-8, newlines as given), bytes, or a function that writes to
    the open binary file (``lambda f: np.save(f, a, allow_pickle=False)``).  ``fsync``: flush the
    file to disk before the rename (caches that must survive a power cut).  The file gets the
    usual permissions (``0o666`` less the umask), not ``mkstemp``'s owner-only ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def ranks_path_for(metrics_path: Path) -> Path:
    """The per-user ranks file that belongs to a test metrics file:
    ``test_metrics.json -> ranks.npz``, ``test-<stamp>.json -> ranks-<stamp>.npz``."""
    metrics_path = Path(metrics_path)
    if metrics_path.name == "test_metrics.json":
        return metrics_path.with_name("ranks.npz")
    m = _STAMP.match(metrics_path.stem)
    if m and m.group("prefix") == "test" and metrics_path.suffix == ".json":
        return metrics_path.with_name(f"ranks-{m.group('stamp')}.npz")
    raise ValueError(f"'{metrics_path}': expected a test metrics file named test_metrics.json or test-<stamp>.json")


def _ranks_taken(metrics_path: Path) -> bool:
    """A test metrics name whose ranks file already exists (left by another run) is not reused."""
    return metrics_path.name.startswith("test-") and metrics_path.suffix == ".json" \
        and ranks_path_for(metrics_path).exists()


def _stamp_names(prefix: str, suffix: str, now: float | None = None):
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    yield f"{prefix}{stamp}{suffix}"
    n = 1
    while True:
        yield f"{prefix}{stamp}-{n}{suffix}"
        n += 1


def stamped_path(folder: Path, prefix: str, suffix: str, now: float | None = None) -> Path:
    """``folder/<prefix><YYYYmmdd-HHMMSS>[-N]<suffix>`` that does not exist yet (e.g. prefix
    ``"test-"``, suffix ``".json"``).  Another process may take the name before you write it: to
    publish, use :func:`write_new`, which never replaces an existing file."""
    folder = Path(folder)
    for name in _stamp_names(prefix, suffix, now):
        if not (folder / name).exists() and not _ranks_taken(folder / name):
            return folder / name
    raise AssertionError("unreachable")


def write_new(folder: Path, prefix: str, suffix: str, data: bytes | str) -> Path:
    """Write ``data`` under a new stamped name in ``folder``, atomically, never over another file
    (temp file, then ``os.link``, which fails when the name exists: the next ``-N`` is tried)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{prefix}{os.getpid()}{suffix}.tmp"
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    try:
        for name in _stamp_names(prefix, suffix):
            target = folder / name
            if _ranks_taken(target):
                continue
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
    finally:
        tmp.unlink(missing_ok=True)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------- lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    """Exclusive use of a run folder by one process (``fcntl.flock`` on ``<folder>/.zoo.lock``).

    The kernel drops the lock when its process exits, however it exits, so a lock file left by a
    killed run is stale by construction and is taken over (its pid is reported as dead).  The file
    is removed by :meth:`release`.
    """

    def __init__(self, folder: Path, name: str = LOCK_NAME) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 200).decode("utf-8", "replace").split()
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                pid = holder[0] if holder else "?"
                host = holder[1] if len(holder) > 1 else "?"
                raise RunFolderBusy(
                    f"run folder '{self.folder}' is in use by another zoo process (pid {pid} on {host}, lock "
                    f"{self.path}); wait for it to finish or choose another --run_dir") from None
            try:  # the file we locked must still be the one at the path (a releaser may have unlinked it)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = os.read(fd, 200).decode("utf-8", "replace").split()
            if old and old[0].isdigit() and int(old[0]) != os.getpid() and _pid_alive(int(old[0])) is False:
                print(f"[zoo] {self.path}: stale lock of pid {old[0]} (no longer running) taken over")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlink first, while still holding the lock
        finally:
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------------- fit rules
def check_fit_folder(folder: Path, overwrite: bool, resuming: bool) -> list[Path]:
    """Refuse a fresh fit into a folder that holds a finished (or checkpointed) run.

    Returns the fit files that ``overwrite`` allows to be replaced (they are removed by the
    caller once the folder is locked)."""
    folder = Path(folder)
    present = [folder / f for f in FIT_FILES if (folder / f).exists()]
    finished = [p for p in present if p.name in ("test_metrics.json", "best.ckpt")]
    if finished and not overwrite and not resuming:
        raise FileExistsError(
            f"run folder '{folder}' already holds a run ({', '.join(p.name for p in finished)}); resume it with "
            "`--ckpt_path last`, write elsewhere with `--run_dir`, or replace it with `--overwrite true`")
    return present if overwrite and not resuming else []


def remove_fit_files(files: list[Path]) -> None:
    for p in files:
        p.unlink(missing_ok=True)
        print(f"[zoo] --overwrite: removed {p}")


def remove_if_no_results(folder: Path, existed_before: bool) -> None:
    """After a failed run: delete the folder if this run created it and no checkpoint or metrics
    were written into it; in a folder that existed, delete only empty sub-folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    results = [p for p in folder.rglob("*") if p.is_file() and (p.suffix == ".ckpt" or p.name.endswith(".json")
                                                                and p.parent == folder)]
    if not existed_before and not results:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()  # only succeeds when empty
        except OSError:
            pass
