"""Atomic checkpoints: written to a temporary file, fsynced, then renamed over the previous one.

A reader never sees a truncated file: until the rename, the previous checkpoint stays whole.
:class:`CheckpointWriter` does that on a background thread from a host copy of the state, so that training
goes on while the file is serialised and synced.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch


def atomic_save(obj: Any, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_host(obj: Any) -> Any:
    """A copy of ``obj`` that training can no longer change: every tensor copied to the CPU (a new tensor, also
    for CPU tensors, which training updates in place), every dict, list and tuple rebuilt; other values kept."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_host(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_host(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints with :func:`atomic_save` on a background thread, one at a time.

    :meth:`submit` takes a host copy (:func:`to_host`), so the caller may change its tensors at once; it first
    waits for the write before it, so at most one copy is held and files land in order. A write's error (a
    full disk, say) is raised by the next :meth:`submit` or :meth:`wait`, once; the previous file stays whole.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.path: Path | None = None  # the file being written, or the last one

    def submit(self, state: Any, path: Path) -> None:
        self.wait()
        self.path = Path(path)
        self._thread = threading.Thread(target=self._write, args=(state, self.path), name="checkpoint-writer")
        self._thread.start()

    def _write(self, state: Any, path: Path) -> None:
        try:
            atomic_save(state, path)
        except BaseException as err:  # raised in the training thread by the next submit() or wait()
            self._error = err

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise its error, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CheckpointError(Exception):
    """A checkpoint cannot be used; the message says why."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        # Checkpoints hold tensors, numbers, strings and dicts only: the safe loader reads them.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's text suggests loading with weights_only=False, which runs whatever code the file holds: never
        # repeat it. Only the part that says what is wrong is kept.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise CheckpointError(
                f"{path}: not a readable cgap_triton checkpoint (damaged, or not a checkpoint)"
            ) from None
        raise CheckpointError(
            f"{path}: not a cgap_triton checkpoint: it holds Python objects other than tensors, numbers and "
            f"strings (it refers to {found.group(1)}), and is not loaded, for safety"
        ) from None
    except Exception as err:  # noqa: BLE001 — any unreadable file is reported the same way
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{path}: not a readable cgap_triton checkpoint ({type(err).__name__}: {first})"
        ) from None


# What a training checkpoint must hold (key → type), checked before any of it is used.
_CHECKPOINT_KEYS = {
    "recipe": dict,
    "spec": dict,
    "widths": dict,
    "model": dict,
    "optimizer": dict,
    "saliency": dict,
    "schedule": dict,
    "progress": dict,
    "compile": dict,
    "rng": dict,
}


def validate_checkpoint(state: Any, path: Path | str = "checkpoint.pt") -> dict[str, Any]:
    """``state`` if it has the shape of a training checkpoint; otherwise CheckpointError saying what is off."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a cgap_triton checkpoint (a {type(state).__name__}, expected a dict)")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a cgap_triton checkpoint (missing {', '.join(missing)})")
    wrong = [f"{k} is a {type(state[k]).__name__}" for k, t in _CHECKPOINT_KEYS.items() if not isinstance(state[k], t)]
    widths = state["widths"] if isinstance(state["widths"], dict) else {}
    if not all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in widths.items()):
        wrong.append("widths are not positive ints by group name")
    if wrong:
        raise CheckpointError(f"{path}: not a cgap_triton checkpoint ({'; '.join(wrong)})")
    return state
