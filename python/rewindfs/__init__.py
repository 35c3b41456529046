"""Talk to rewindfs mounts from Python.

Snapshots of a live mount are taken by its daemon (the same request as
``rewindfs snapshot``), listed from its repository, and read back through
the mount's read-only ``.snapshots`` directory.
"""

from .client import (
    Mount,
    RewindfsError,
    find_mount,
    open_snapshot,
    snapshot,
    snapshot_path,
    snapshots,
    status,
)

__all__ = [
    "Mount",
    "RewindfsError",
    "find_mount",
    "open_snapshot",
    "snapshot",
    "snapshot_path",
    "snapshots",
    "status",
]
__version__ = "0.1.0"
