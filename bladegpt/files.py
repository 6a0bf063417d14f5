"""Writes that survive a crash: a temporary file, fsync, then one rename.

A reader sees the old file or the new one, never half of either, whether the process is
killed or the machine loses power (the rename is made durable by syncing the folder too).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give: 0644 under the usual umask


def temp_path(path: Path) -> Path:
    """Where `path` is written before the rename: a hidden sibling, so it is on the same disk."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename is durable once its folder is), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage(path: Path, write: Callable[[str], None]) -> Path:
    """Write through `write(tmp_name)` to the temporary path, flushed to disk; returns it.

    A failure (a full disk, say) removes the partial file and re-raises.
    """
    tmp = clear_staged(path)
    try:
        write(str(tmp))
        fsync(tmp)
        os.chmod(tmp, FILE_MODE)  # some writers (safetensors) create files 0600
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def clear_staged(path: Path) -> Path:
    """`path`'s staged copy's name, cleared for a fresh write: a copy a killed write left is removed (so that
    nothing is written through a second, hard, link to it); a link or a folder there is not ours, and is kept.

    Raises FileExistsError naming it: a write would go through a link into the file it points to."""
    tmp = temp_path(path)
    if tmp.is_symlink() or (tmp.exists() and not tmp.is_file()):
        raise FileExistsError(errno.EEXIST, f"{tmp.name} is in the way, a link or folder BladeGPT did not make: "
                              "move it away", str(tmp))
    tmp.unlink(missing_ok=True)
    return tmp


def commit(tmp: Path, path: Path) -> None:
    """Move a staged file into place and make the rename itself durable."""
    os.replace(tmp, path)
    fsync(Path(path).parent)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    commit(stage(path, write), path)


def stage_link(source: Path, path: Path) -> Path:
    """Stage `path` as the same file as `source`, without writing its bytes again (a hard link; a copy on a
    filesystem without hard links), for `commit`: a later os.replace of `source` leaves `path` as it is."""
    tmp = clear_staged(path)
    try:
        os.link(source, tmp)
    except OSError:
        return stage(path, lambda name: shutil.copyfile(source, name))
    return tmp


def atomic_link(source: Path, path: Path) -> None:
    """Make `path` the same file as `source` (stage_link), atomically."""
    commit(stage_link(source, path), path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def publish_dir(tmp: Path, dest: Path) -> None:
    """Move a finished folder into place. A non-empty one there (checked by the caller to be ours to
    replace) is moved aside first and deleted after, so `dest` is never half old and half new."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    replacing = dest.is_dir() and any(dest.iterdir())
    if replacing:
        os.replace(dest, old)
    os.replace(tmp, dest)  # onto nothing, or onto an empty folder
    fsync(dest.parent)
    if replacing:
        shutil.rmtree(old)


def temp_dir(dest: Path, contents: set[str]) -> Path:
    """A fresh hidden folder beside `dest` to build it in, before `publish_dir`. Folders that killed
    processes left for the same `dest` (their pid is in the name: one being built, or one replaced and not yet
    deleted) are removed first, but only those holding nothing beyond `contents`, the files the caller writes
    there: never a folder of the user's."""
    for old in [*dest.parent.glob(f".{dest.name}.tmp-*"), *dest.parent.glob(f".{dest.name}.old-*")]:
        try:
            os.kill(int(old.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            if old.is_dir() and _holds_only(old, contents):
                shutil.rmtree(old, ignore_errors=True)
        except (ValueError, PermissionError):
            continue  # not ours, or a live process of another user
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.is_dir() and _holds_only(tmp, contents):
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _holds_only(folder: Path, names: set[str]) -> bool:
    allowed = names | {temp_path(Path(name)).name for name in names}  # a write cut short leaves a staged copy
    return all(entry.name in allowed for entry in folder.iterdir())


def cache_dir() -> Path:
    """BladeGPT's own cache (measurements, copy-meter indexes): $BLADEGPT_CACHE, else ~/.cache/bladegpt."""
    root = os.environ.get("BLADEGPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "bladegpt"
    )
    return Path(root)


def is_gguf(path: Path) -> bool:
    """Whether a file is GGUF, by its magic (a file of any name may be one)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False
