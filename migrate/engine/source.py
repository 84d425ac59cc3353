"""Reading source files in their own encoding and writing them back atomically.

A file is read once, with a stamp of what was read (size, mtime_ns, sha256). `--write` replaces it
only if, right before the rename and under an advisory lock (`fcntl.flock` on the file itself), the
file still matches its stamp: an edit made while the run went on, or another tf-migrate run that
wrote the file first, is never overwritten. The lock only orders tf-migrate runs; an editor that
saves between the check and the rename (microseconds) is not excluded.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
import tokenize
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the stamp is still compared, without a lock
    fcntl = None

DEFAULT_MAX_FILE_SIZE = 10 * 1024 * 1024


class SourceError(Exception):
    """A file that cannot be read as Python source; the message is meant for the user."""


class NotRegularFile(SourceError):
    """A FIFO, device or socket named `*.py`: reading it could block or never end. Skipped."""


class FileChanged(Exception):
    """The file on disk is no longer the one that was read: writing would lose someone's edit."""


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, info: os.stat_result, raw: bytes) -> "Stamp":
        return cls(info.st_size, info.st_mtime_ns, hashlib.sha256(raw).hexdigest())


@dataclass(frozen=True)
class SourceFile:
    path: Path
    text: str
    encoding: str


def read_source(path: Path) -> SourceFile:
    return decode_source(path, read_raw(path))


def read_raw(path: Path, max_size: int = DEFAULT_MAX_FILE_SIZE) -> bytes:
    return read_stamped(path, max_size)[0]


def read_stamped(path: Path, max_size: int = DEFAULT_MAX_FILE_SIZE) -> tuple[bytes, Stamp]:
    """The file's bytes and their stamp. Opened without blocking and checked on the open file, so
    a FIFO or `/dev/zero` behind a `*.py` name is never read, and a file over `max_size` is refused
    before a byte of it is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SourceError("no such file or directory") from None
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SourceError("is a directory, not a Python file")
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"not a regular file ({_kind(info.st_mode)}): skipped")
        if info.st_size > max_size:
            raise SourceError(f"{info.st_size} bytes, larger than --max-file-size ({max_size} bytes): "
                              "not read")
        try:
            raw = handle.read(max_size + 1)
        except OSError as exc:
            raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > max_size:  # grew since fstat
        raise SourceError(f"larger than --max-file-size ({max_size} bytes): not read")
    return raw, Stamp.of(info, raw)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


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


def write_atomic(path: Path, text: str, encoding: str = "utf-8", expect: Stamp | None = None) -> None:
    """Write via a temporary file in the same folder and rename it into place, keeping the mode and,
    where permitted, the owner and group. The path gets a new inode: hard links to the old one keep
    the old text.

    A symlink is written through (its target is replaced), so the link itself survives. With
    `expect`, the file must still match that stamp under the lock, else `FileChanged`.
    """
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if expect is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace(path, text, encoding, path.stat() if path.exists() else None)
        return
    with _locked(path) as fd:
        info = os.fstat(fd)
        with open(fd, "rb", closefd=False) as handle:
            current = Stamp.of(info, handle.read())
        if current != expect:
            raise FileChanged("changed on disk since it was read; not written (run again)")
        _replace(path, text, encoding, info)


def _replace(path: Path, text: str, encoding: str, old: os.stat_result | None) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as handle:
            handle.write(text)
        if old is not None:
            try:
                os.chown(tmp, old.st_uid, old.st_gid)
            except OSError:
                pass  # only root may give a file away; a user keeps what they may
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def _locked(path: Path) -> Iterator[int]:
    """An open descriptor of the file now at `path`, exclusively flock-ed. A run that waited for
    the lock while another replaced the file holds the old inode: it opens the new one and waits
    again."""
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise FileChanged("deleted since it was read; not written") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            now, held = os.stat(path), os.fstat(fd)
        except FileNotFoundError:
            os.close(fd)
            raise FileChanged("deleted since it was read; not written") from None
        except BaseException:
            os.close(fd)
            raise
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # releases the lock
