"""Reading source files in their own encoding and writing them back atomically."""

from __future__ import annotations

import io
import os
import stat
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path


class SourceError(Exception):
    """A file that cannot be read as Python source; the message is meant for the user."""


@dataclass(frozen=True)
class SourceFile:
    path: Path
    text: str
    encoding: str


def read_source(path: Path) -> SourceFile:
    return decode_source(path, read_raw(path))


def read_raw(path: Path) -> bytes:
    if path.is_dir():
        raise SourceError("is a directory, not a Python file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceError("no such file or directory") from None
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    return raw


def decode_source(path: Path, raw: bytes) -> SourceFile:
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    except SyntaxError as exc:
        if b"coding" in raw[:200]:
            raise SourceError(f"bad encoding declaration: {exc}") from None
        encoding = "utf-8"  # no declaration: the decode below says where the bad byte is
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"not valid {encoding}: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        ) from None
    return SourceFile(path, text, encoding)


def split_lines(text: str) -> list[str]:
    """Lines as Python counts them (ends kept): `str.splitlines` also breaks at form feeds and
    other separators that are whitespace inside a line of code, which corrupts diffs and line numbers."""
    return io.StringIO(text, newline="").readlines()


def write_atomic(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write via a temporary file in the same folder and rename it into place, keeping the mode
    (a new file gets the umask's, as `open` would give it, not the temporary file's 0600).

    A symlink is written through (its target is replaced), so the link itself survives.
    """
    write_atomic_bytes(path, text.encode(encoding))


def write_atomic_bytes(path: Path, data: bytes) -> None:
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
