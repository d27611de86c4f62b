"""One writer per output folder: an advisory lock file that a second run is refused by.

`folder_lock(folder, command)` creates `<folder>/.newllm.lock` (pid, host, command, start time) with
O_EXCL and removes it on exit. A lock whose process has died on this host is stale: it is taken over
with a warning. A lock of a live process, or of another host (whose processes cannot be checked from
here), refuses the run in one line naming its holder. Nested use by the process that holds the lock
(the pipeline's three steps) is allowed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from pathlib import Path

LOCK_NAME = ".newllm.lock"
logger = logging.getLogger("newllm")
_held: set[Path] = set()  # folders this process holds


class FolderInUseError(RuntimeError):
    """Another live run writes to the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's record, or None when it is unreadable (a crash while it was written: stale)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def _try_create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    return True


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str):
    folder = Path(folder).resolve()
    if folder in _held:
        yield
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host, "command": command,
              "started": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    while not _try_create(path, record):
        holder = _holder(path)
        if holder is not None and (holder.get("host") != host or _alive(holder["pid"])):
            where = "" if holder.get("host") == host else f" on {holder.get('host')}"
            if created:
                folder.rmdir()
            raise FolderInUseError(
                f"{folder} is in use by process {holder['pid']}{where} ({holder.get('command', '?')}, since "
                f"{holder.get('started', '?')}); wait for it, or remove {path} if that process is gone"
            )
        logger.warning("%s: taking over the lock of a run that is gone (%s)", folder,
                       f"process {holder['pid']}" if holder else "unreadable lock file")  # fmt: skip
        path.unlink(missing_ok=True)
    _held.add(folder)
    try:
        yield
    finally:
        _held.discard(folder)
        path.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
