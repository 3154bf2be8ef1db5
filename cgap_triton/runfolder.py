"""Run folders: one writer at a time, no writes through links, nothing half-made left behind.

A run folder holds the files of :data:`RUN_FILES`, the lock file :data:`LOCK` while a process owns it,
and, briefly, the temporaries of atomic writes (``.<name>.<random>.tmp``). The rules:

- **One process per folder.** :class:`RunLock` creates ``.lock`` exclusively and writes the owner's pid;
  a second process is refused while the owner lives; a lock left by a dead process is taken over.
- **No writes outside.** A run file that is a symbolic link is refused (:func:`refuse_links`): a link
  could point anywhere, and appending or saving through it would write there.
- **No dead ends.** A folder is usable by a fresh run when it is empty, or when it holds only what a run
  that never reached its first checkpoint leaves (:func:`restartable`); a run that fails before its first
  checkpoint removes what it wrote (:func:`remove_unfinished`). Temporaries of a killed writer are
  removed when the folder is next opened (:func:`clean_stale_temporaries`).
"""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path

RUN_FILES = ("recipe.toml", "metrics.jsonl", "summary.json", "checkpoint.pt", "model.pt", "growth.png")
LOCK = ".lock"
# What a run leaves before its first checkpoint: a fresh run may start over in such a folder.
_BEFORE_CHECKPOINT = {"recipe.toml", "metrics.jsonl", LOCK}
_WRITTEN = "|".join(re.escape(n) for n in RUN_FILES)
_TEMPORARY = re.compile(rf"^\.(?:{_WRITTEN})\.[A-Za-z0-9_]+\.tmp$")  # atomic writes: .<name>.<random>.tmp


class RunFolderError(Exception):
    """The run folder cannot be used as asked; the message names it and says what to do."""


def is_temporary(name: str) -> bool:
    return bool(_TEMPORARY.match(name))


def check_new_folder(out: Path, option: str = "--out") -> None:
    """Refuse, before anything is written, a folder a fresh run cannot create or use."""
    out = Path(out)
    name_max = 255
    for part in out.parts:
        if len(os.fsencode(part)) > name_max:
            raise RunFolderError(
                f"{option} {out}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes, longer than the "
                f"{name_max} a file system allows"
            )
    if out.is_symlink() and not out.exists():
        raise RunFolderError(f"{option} {out}: a broken symbolic link; expected a folder or a new name")
    if out.exists():
        if not out.is_dir():
            raise RunFolderError(f"{option} {out}: exists and is not a folder; choose a new name")
        entries = _entries(out)
        if entries and not restartable(out):
            if (out / "summary.json").exists():
                hint = f" (a finished run: python -m cgap_triton report {out} shows it)"
            elif (out / "checkpoint.pt").is_file():
                hint = f", or continue its run with --resume {out}"
            else:
                hint = ""
            raise RunFolderError(f"{option} {out}: the folder exists and is not empty; choose another{hint}")
        if not os.access(out, os.W_OK | os.X_OK):
            raise RunFolderError(f"{option} {out}: the folder is not writable")
        return
    parent = out.absolute().parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise RunFolderError(f"{option} {out}: {parent} is a file, so no folder can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunFolderError(f"{option} {out}: cannot create it, {parent} is not writable")


def restartable(out: Path) -> bool:
    """True when ``out`` holds only what a run that never reached a checkpoint leaves (and no live owner)."""
    names = _entries(out)
    leftovers = {n for n in names if not is_temporary(n)}
    if not leftovers <= _BEFORE_CHECKPOINT:
        return False
    return LOCK not in names or lock_owner(out) in (None, os.getpid())


def _entries(out: Path) -> list[str]:
    try:
        return os.listdir(out)
    except OSError as err:
        raise RunFolderError(f"{out}: cannot be read ({err.strerror})") from None


def refuse_links(out: Path) -> None:
    """A run file that is a symbolic link could send our writes anywhere: refuse the folder."""
    for name in RUN_FILES + (LOCK,):
        if (Path(out) / name).is_symlink():
            raise RunFolderError(
                f"{out / name}: a symbolic link; a run folder's files must be regular files (writing through the "
                "link would change a file outside the folder)"
            )


def clean_stale_temporaries(out: Path) -> list[str]:
    """Remove temporaries of atomic writes that a killed process left; returns their names."""
    removed = []
    for name in _entries(out):
        if is_temporary(name) and not (Path(out) / name).is_symlink():
            (Path(out) / name).unlink(missing_ok=True)
            removed.append(name)
    return removed


def remove_unfinished(out: Path, created: bool) -> None:
    """After a failure before the first checkpoint: remove what the run wrote (and the folder it made)."""
    out = Path(out)
    if not out.is_dir() or (out / "checkpoint.pt").exists():
        return
    for name in _entries(out):
        if name in _BEFORE_CHECKPOINT or is_temporary(name):
            (out / name).unlink(missing_ok=True)
    if created:
        try:
            out.rmdir()
        except OSError:  # something else appeared in it: leave it to its owner
            pass


def lock_owner(out: Path) -> int | None:
    """The pid of the live process holding ``out``'s lock, or None (no lock, or its owner is gone)."""
    path = Path(out) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunFolderError(f"{path}: a symbolic link; expected the run's lock file") from None
        raise
    with os.fdopen(fd) as f:
        text = f.read(200)
    try:
        pid_text, _, host = text.strip().partition(" ")
        pid = int(pid_text)
    except ValueError:
        return None  # torn or foreign content: no owner can be proven
    if host and host != socket.gethostname():
        return pid  # another machine's process: cannot be checked, so assumed alive
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``.lock`` in the run folder, holding ``"<pid> <host>"``; released on :meth:`release`."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self.held = False

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                owner = lock_owner(self.path.parent)
                if owner is not None and owner != os.getpid():
                    raise RunFolderError(
                        f"{self.path.parent}: another process (pid {owner}) is running in this folder; wait for it "
                        f"to finish or stop it (a lock left by a process that died is taken over)"
                    ) from None
                self.path.unlink(missing_ok=True)  # a dead owner's lock: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return
        raise RunFolderError(f"{self.path}: could not take the lock (another process keeps taking it)")

    def release(self) -> None:
        if self.held:
            self.held = False
            if lock_owner(self.path.parent) == os.getpid():
                self.path.unlink(missing_ok=True)


class RunFolder:
    """The folder one run writes: opened for a new run or a resume, locked to this process, closed at the end."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock: RunLock | None = None
        self._created = False

    def open_new(self) -> None:
        """Create (or take over an empty or never-checkpointed) run folder, locked to this process."""
        out = self.path
        check_new_folder(out)
        try:
            out.mkdir(parents=True)
            self._created = True
        except FileExistsError:
            pass
        except OSError as err:
            raise RunFolderError(f"--out {out}: cannot create the folder ({err.strerror})") from None
        self._take_lock()
        check_new_folder(out)  # again, under the lock: another process may have started in it
        clean_stale_temporaries(out)
        refuse_links(out)

    def open_for_resume(self) -> None:
        """Lock a run folder to continue its run; a finished run is refused, a killed writer's leftovers removed."""
        out = self.path
        if not out.is_dir():
            raise RunFolderError(f"--resume {out}: no such run folder")
        if (out / "summary.json").is_file():
            raise RunFolderError(
                f"--resume {out}: the run has finished (summary.json is there); nothing to resume. Its results: "
                f"python -m cgap_triton report {out}"
            )
        self._take_lock()
        refuse_links(out)
        clean_stale_temporaries(out)

    def close(self, finished: bool) -> None:
        """Release the folder; a run that never reached a checkpoint leaves nothing behind."""
        if self._lock is None:
            return
        if not finished:
            remove_unfinished(self.path, self._created)
        self._lock.release()
        self._lock = None

    def _take_lock(self) -> None:
        lock = RunLock(self.path)
        try:
            lock.acquire()
        except OSError as err:
            raise RunFolderError(f"{self.path}: cannot write in the folder ({err.strerror})") from None
        self._lock = lock
