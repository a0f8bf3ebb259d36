"""Output paths: checked before any work, written atomically. Torch-free, so requests are checked before the
network code is imported."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WRITE_FORMATS = (".mp4", ".gif", "folder of PNG frames (no extension or trailing '/')")


def existing_video_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; FileNotFoundError unless a video file or frame folder is there."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such video file or frame folder", str(path))
    return path


def check_creatable(path: str | os.PathLike[str]) -> None:
    """Raise ValueError unless ``path`` can be created: its nearest existing ancestor is a directory that takes
    new entries (tried: a probe directory is made and removed there)."""
    out = Path(path)
    existing = next(p for p in out.absolute().parents if p.exists())  # the root always exists
    if not existing.is_dir():
        raise ValueError(f"cannot write {out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {out}: directory {existing} is not writable")
    # Permission bits do not tell everything (root, read-only mounts, /proc): make and remove a probe.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".videoldm-probe-", dir=existing))
    except OSError as error:
        raise ValueError(f"cannot write {out}: directory {existing} refuses new files ({error.strerror})") from None


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file or directory at; it replaces ``path`` when the block completes.

    The temporary name is hidden, on the same file system (so the rename is atomic), keeps the
    extension (FFmpeg picks the container from it) and gets the usual permissions. If the block
    fails or is interrupted, the temporary is removed and ``path`` is left as it was. An existing
    ``path`` is replaced if it is a file or an empty directory.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial{out.suffix}")
    try:
        yield staging
        if staging.is_dir() and out.is_dir():
            out.rmdir()  # a rename cannot replace a directory, even an empty one
        os.replace(staging, out)
    except BaseException:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
        raise


def check_video_output(path: str | os.PathLike[str]) -> str:
    """Validate a destination for :func:`write_video` without writing anything; returns its kind.

    The kind is ``".mp4"``, ``".gif"`` or ``"folder"``. Raises ValueError for an unknown extension,
    a file where a frame folder is wanted (or a directory where a file is wanted), a non-empty frame
    folder, or a location that cannot be created (:func:`check_creatable`).
    """
    kind = write_kind(path)
    out = Path(path)
    if kind == "folder":
        if out.is_file():
            raise ValueError(f"{out} is a file; a folder of PNG frames needs a new or empty directory")
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(f"{out} is a non-empty directory; PNG frames need a new or empty folder")
    elif out.is_dir():
        raise ValueError(f"{out} is a directory; expected a {kind} file path")
    check_creatable(out)
    return kind


def write_kind(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    suffix = Path(text).suffix.lower()
    if text.endswith(("/", os.sep)) or not suffix:
        return "folder"
    if suffix not in WRITE_FORMATS:
        raise ValueError(
            f"cannot write {text!s}: unknown extension {suffix!r}; supported: {', '.join(WRITE_FORMATS)}"
        )
    return suffix
