"""The control-socket client (see src/daemon/control.rs for the protocol:
one JSON request per line; one JSON response per line, or output frames
for ``cli`` requests)."""

import datetime as _dt
import json
import os
import socket
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Union

SOCKET = "control.sock"
SNAPSHOTS_DIR = ".snapshots"

At = Union[None, int, str, _dt.datetime]


class RewindfsError(Exception):
    """A rewindfs request failed; the message says why."""


class Mount(NamedTuple):
    mountpoint: str
    repo: str


def _unescape(s: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = bytearray(), 0
    b = s.encode()
    while i < len(b):
        if b[i] == 0x5C and i + 3 < len(b) and b[i + 1 : i + 4].isdigit():
            out.append(int(b[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(b[i])
            i += 1
    return out.decode(errors="surrogateescape")


def _mounts() -> List[Mount]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-")
            except ValueError:
                continue
            fstype, source = fields[sep + 1], _unescape(fields[sep + 2])
            # The source is "rewindfs:" and the repository's path (the bare
            # path for daemons started before 2026-12-04).
            if source.startswith("rewindfs:"):
                source = source[len("rewindfs:"):]
            if fstype not in ("fuse", "fuse.rewindfs") or not source.startswith("/"):
                continue
            out.append(Mount(_unescape(fields[4]), source))
    return out


def find_mount(path: Union[str, os.PathLike]) -> Mount:
    """The innermost rewindfs mount holding ``path`` (a mountpoint or any
    path inside it), confirmed by its daemon."""
    p = os.path.realpath(os.fspath(path))
    best = None
    for m in _mounts():
        mp = m.mountpoint
        if p == mp or p.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best.mountpoint):
                best = m
    if best is None:
        raise RewindfsError(f"{p} is not inside a rewindfs mount")
    st = _request(best.repo, {"cmd": "status"})["status"]
    live = st.get("live") and best.mountpoint == st.get("mountpoint")
    if not live and best.mountpoint not in st.get("mounts", []):
        raise RewindfsError(
            f"the daemon of {best.repo} does not serve {best.mountpoint}"
        )
    return best


def _owned_by_us_or_root(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def _connect(repo: str, timeout: Optional[float]) -> socket.socket:
    path = os.path.join(repo, SOCKET)
    # As the CLI insists: the repository directory and the socket belong to
    # root or to us (another user could put a socket of theirs there), and
    # neither is followed through a symlink.
    try:
        dst = os.lstat(repo)
        sst = os.lstat(path)
    except FileNotFoundError:
        raise RewindfsError(f"no rewindfs daemon holds {repo} (no {SOCKET})") from None
    import stat as _stat
    if not _stat.S_ISDIR(dst.st_mode) or not _owned_by_us_or_root(dst):
        raise RewindfsError(f"{repo} is not a directory of root's or yours: not talking to it")
    if not _stat.S_ISSOCK(sst.st_mode) or not _owned_by_us_or_root(sst):
        raise RewindfsError(f"{path} is not a socket of root's or yours: not talking to it")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except FileNotFoundError:
        s.close()
        raise RewindfsError(f"no rewindfs daemon holds {repo} (no {SOCKET})") from None
    except ConnectionRefusedError:
        s.close()
        raise RewindfsError(f"the daemon of {repo} is gone (stale {SOCKET})") from None
    except PermissionError:
        s.close()
        raise RewindfsError(
            f"permission denied on {path}: the daemon answers root and the user running it"
        ) from None
    # The daemon must be root or us (as the CLI insists).
    creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    if uid not in (0, os.geteuid()):
        s.close()
        raise RewindfsError(f"the process on {path} runs as uid {uid}, neither root nor you")
    return s


def _request(repo: str, req: Dict[str, Any], timeout: Optional[float] = 30.0) -> Dict[str, Any]:
    with _connect(repo, timeout) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        f = s.makefile("rb")
        line = f.readline()
    if not line:
        raise RewindfsError("the daemon closed the connection without answering")
    resp = json.loads(line)
    if resp.get("reply") == "error":
        raise RewindfsError(resp.get("message", "error"))
    return resp


def _cli(repo: str, args: List[str], timeout: Optional[float] = 600.0) -> str:
    """Run a read-only CLI command in the daemon; its stdout."""
    req = {
        "cmd": "cli",
        "args": [list(os.fsencode(a)) for a in args],
        "cwd": list(os.fsencode(os.getcwd())),
        "umask": None,
    }
    out, err = bytearray(), bytearray()
    with _connect(repo, timeout) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        f = s.makefile("rb")
        while True:
            head = f.read(5)
            if head[:1] == b"{":
                # An error reply instead of frames.
                line = head + f.readline()
                raise RewindfsError(json.loads(line).get("message", line.decode(errors="replace")))
            if len(head) < 5:
                raise RewindfsError("the daemon closed the connection")
            tag, n = head[:1], struct.unpack(">I", head[1:])[0]
            if n > 64 << 20:
                raise RewindfsError("bad frame from the daemon")
            payload = f.read(n)
            if tag == b"o":
                out += payload
            elif tag == b"e":
                err += payload
            elif tag == b"x":
                code = struct.unpack(">i", payload)[0]
                break
            else:
                raise RewindfsError("bad frame from the daemon")
    if code != 0:
        raise RewindfsError(err.decode(errors="replace").strip() or f"exit code {code}")
    return out.decode()


def status(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The daemon's status of the mount holding ``path``."""
    m = find_mount(path)
    return _request(m.repo, {"cmd": "status"})["status"]


def snapshot(
    path: Union[str, os.PathLike],
    label: Optional[str] = None,
    kind: Optional[str] = None,
    timeout: Optional[float] = None,
) -> Dict[str, Any]:
    """Take a snapshot of the mount holding ``path`` now and wait until it
    is committed. ``kind``: None (the default: incremental), "full",
    "incremental" or "differential". Returns the snapshot record."""
    m = find_mount(path)
    resp = _request(m.repo, {"cmd": "snapshot", "kind": kind, "label": label}, timeout)
    return resp["record"]


def snapshots(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """Every snapshot of the mount holding ``path``, oldest first."""
    m = find_mount(path)
    return json.loads(_cli(m.repo, ["snapshots", "--json"]))


def _selector(m: Mount, at: At) -> str:
    if at is None or at == "latest":
        return "latest"
    if isinstance(at, bool):
        raise TypeError("at must be None, an id, a name, a datetime or '@TIME'")
    if isinstance(at, int):
        for s in snapshots(m.mountpoint):
            if s["id"] == at:
                return s["name"]
        raise RewindfsError(f"no snapshot {at}")
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None:
            at = at.astimezone()
        utc = at.astimezone(_dt.timezone.utc)
        # A datetime stands for its whole microsecond: select up to its end,
        # so the time of a snapshot (to the microsecond) selects it.
        nanos = utc.microsecond * 1000 + 999
        return "@" + utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"
    if isinstance(at, str):
        if "/" in at or at in (".", ".."):
            raise RewindfsError(f"bad snapshot selector {at!r}")
        return at
    raise TypeError("at must be None, an id, a name, a datetime or '@TIME'")


def snapshot_path(path: Union[str, os.PathLike], at: At = None) -> str:
    """Where ``path`` (a file or directory inside a mount) is in the
    snapshot ``at``: a path under ``MOUNTPOINT/.snapshots/``."""
    m = find_mount(path)
    p = os.path.realpath(os.fspath(path))
    rel = os.path.relpath(p, m.mountpoint)
    if rel == ".":
        rel = ""
    if rel.split(os.sep)[0] == SNAPSHOTS_DIR:
        raise RewindfsError(f"{p} is already inside {SNAPSHOTS_DIR}")
    return os.path.join(m.mountpoint, SNAPSHOTS_DIR, _selector(m, at), rel)


def open_snapshot(path: Union[str, os.PathLike], at: At = None, mode: str = "rb", **kw):
    """Open the version of ``path`` in snapshot ``at`` (read-only)."""
    if any(c in mode for c in "wax+"):
        raise RewindfsError("snapshots are read-only")
    p = snapshot_path(path, at)
    try:
        return open(p, mode, **kw)
    except FileNotFoundError:
        raise RewindfsError(f"{path} is not in snapshot {at if at is not None else 'latest'}") from None
