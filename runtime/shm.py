"""Shared-memory segments: named `dmabuf-<run id>-<what>`, created 0600 by the exporter only.

Why attach() patches the resource tracker: on Python < 3.13, `SharedMemory(name)` registers the
segment with the opener's resource tracker, which unlinks it when the opener exits, so an
importer exiting would destroy the exporter's heaps (CPython gh-82300; `track=False` arrived in
3.13). The creator keeps its registration: if the exporter is SIGKILLed, its tracker unlinks
the segments it created, and `dmabuf-emu down` unlinks whatever is left by name.
"""

from __future__ import annotations

import os
import sys
import threading
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

PREFIX = "dmabuf-"
SHM_DIR = "/dev/shm"
_attach_lock = threading.Lock()


def segment_name(run_id: str, what: str) -> str:
    return f"{PREFIX}{run_id}-{what}"


def create(name: str, size: int) -> SharedMemory:
    """Create a new segment (fails if it exists). Mode 0600: only this user may open it."""
    if not name.startswith(PREFIX):
        raise ValueError(f"segment names must start with {PREFIX!r}: {name!r}")
    shm = SharedMemory(name=name, create=True, size=size)
    os.fchmod(shm._fd, 0o600)  # SharedMemory asks for 0600, but the umask may not; make sure
    return shm


def attach(name: str) -> SharedMemory:
    """Open an existing segment without registering it with this process's resource tracker."""
    if sys.version_info >= (3, 13):
        return SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    with _attach_lock:
        original = resource_tracker.register

        def register(rname: str, rtype: str) -> None:
            if rtype != "shared_memory":
                original(rname, rtype)

        resource_tracker.register = register  # type: ignore[assignment]
        try:
            return SharedMemory(name=name)
        finally:
            resource_tracker.register = original  # type: ignore[assignment]


def unlink(name: str) -> bool:
    """Remove a segment by name without opening it; True if it existed."""
    try:
        os.unlink(os.path.join(SHM_DIR, name.lstrip("/")))
        return True
    except FileNotFoundError:
        return False


def existing(run_id: str | None = None) -> list[str]:
    """Our segments present now (all runs, or one run's)."""
    prefix = segment_name(run_id, "") if run_id else PREFIX
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []
