"""Files: atomic writes (a reader, or a resumed run, never sees a half-written file or directory; a write that fails
for lack of space or permission is a PreferError naming the path, and whatever was there before stays intact),
cleanup of what killed writes left, and content fingerprints (a run refuses to resume on changed data)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefer.errors import PreferError

# errno values a user can cause and fix (full disk, quota, file size limit, read-only or forbidden place)
_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.EISDIR,
    errno.ENOTDIR,
}
# How libraries that do not raise OSError report a failed write: torch's zip writer ("unexpected pos", "file write
# failed"), safetensors' Rust IoError (StorageFull, ...).
_WRITE_FAILURE = re.compile(
    r"No space left|Disk quota|File too large|write failed|unexpected pos|IoError|"
    r"StorageFull|Read-only file system|Permission denied",
    re.IGNORECASE,
)
# What atomic_path leaves when killed: mkdtemp's `.NAME.XXXXXXXX`, the swapped-out `.NAME.old`, and the sharded
# optimizer's `.step_N.optimizer` (training.save_checkpoint).
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>old|optimizer|[A-Za-z0-9_]{8})$")


def write_error(path: str | os.PathLike, error: BaseException) -> PreferError | None:
    """The PreferError for a failed write of `path` that the user can fix, or None for any other error."""
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
        reason = error.strerror or str(error)
    elif not isinstance(error, (OSError, PreferError)) and _WRITE_FAILURE.search(str(error)):
        reason = str(error).splitlines()[0][:200]
    else:
        return None
    try:
        free = shutil.disk_usage(Path(path).parent).free
        space = f"; {free / 1e6:.1f} MB free there"
    except OSError:
        space = ""
    return PreferError(f"{path}: cannot write ({reason}{space}); free space or fix permissions, then resume")


def read_error(path: str | os.PathLike, error: OSError) -> PreferError:
    """The one-line PreferError for a user's file that cannot be read (permissions, a directory where a file is
    expected, an I/O error): every OSError while reading user data names the file and the reason."""
    reason = error.strerror or str(error) or type(error).__name__
    hint = "; check its permissions" if isinstance(error, PermissionError) else ""
    return PreferError(f"{path}: cannot read ({reason}){hint}")


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_modes(path: Path) -> None:
    """Give `path` (and everything under a directory) the mode a plain write gives under the umask: 0644 for a
    file and 0755 for a directory under the usual 022. Libraries that write through a private temporary file
    (safetensors: 0600) would otherwise leave weights that the group and others cannot read."""
    mask = current_umask()
    entries = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for entry in entries:
        if entry.is_symlink() or not entry.exists():
            continue
        executable = entry.is_dir() or entry.stat().st_mode & 0o111
        os.chmod(entry, (0o777 if executable else 0o666) & ~mask)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (file or directory)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    except OSError as error:
        raise write_error(path, error) or PreferError(
            f"{path.parent}: cannot create a file there ({error.strerror or error})"
        ) from None
    try:
        yield tmp
        plain_modes(tmp)
        if path.exists() and path.is_dir() != tmp.is_dir():
            found, wrote = ("a directory", "file") if path.is_dir() else ("a file", "directory")
            raise PreferError(f"{path}: is {found}, where a {wrote} is to be written; choose another path")
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except Exception as error:
        converted = write_error(path, error)
        if converted is None:
            raise
        raise converted from None
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def clean_staging(
    directory: str | os.PathLike, *, subdirectories: tuple[str, ...] = ("checkpoints", "snapshots")
) -> list[Path]:
    """Remove the staging directories killed atomic writes left in `directory` (and its `subdirectories`). A
    `.NAME.old` whose NAME is missing (killed between the two renames of a directory swap) is put back as NAME.
    Call it only while owning the directory (prefer.run_dir.claim_run_dir): a live writer's staging looks the same.
    Returns what was removed."""
    removed = []
    for parent in [Path(directory), *(Path(directory) / name for name in subdirectories)]:
        if not parent.is_dir():
            continue
        for entry in parent.iterdir():
            match = _STAGING.match(entry.name)
            if match is None or not entry.is_dir() or entry.is_symlink():
                continue
            target = parent / match["name"]
            if match["kind"] == "old" and not target.exists():
                os.replace(entry, target)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_fingerprint(path: str | Path) -> str:
    """A short hash of a file's bytes, of every file under a directory (a saved data set), or of a hub name (hf:...:
    its contents are the hub's to change)."""
    path_ = Path(path)
    digest = hashlib.sha256()
    file = path_
    try:
        if str(path).startswith("hf:") and not path_.exists():
            digest.update(str(path).encode())
        elif path_.is_dir():
            for file in sorted(p for p in path_.rglob("*") if p.is_file()):
                digest.update(str(file.relative_to(path_)).encode() + b"\0" + file.read_bytes())
        else:
            digest.update(path_.read_bytes())
    except OSError as error:
        raise read_error(file, error) from None
    return digest.hexdigest()[:16]
