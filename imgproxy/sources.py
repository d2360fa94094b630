"""Resolve a `/picture/<source>` into an `Original`: where its bytes are and which version they are.

Local files must resolve (symlinks included) inside the configured root; the version is the
file's mtime_ns and size, so replacing a file changes every cache key derived from it.

Resolving (realpath: one lstat per path component) costs more than the rest of a cache hit, so a
resolution is remembered with the device and inode it led to. A later request reuses it only
when stat() of the requested path (which follows every symlink on it) still reaches that same
file, so a path re-pointed anywhere else is resolved and checked afresh.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import BadRequest, NotFound, PayloadTooLarge


@dataclass(frozen=True)
class Original:
    """A source image ready to be opened: exactly one of `path` and `data` is set."""

    id: str  # canonical identifier: "local:photos/a.jpg" or the remote URL
    version: str  # changes whenever the bytes may have changed
    size: int
    last_modified: float | None = None  # epoch seconds, for Last-Modified
    path: str | None = None
    data: bytes | None = None

    @property
    def kind(self) -> str:
        """local, s3 or remote (metrics label)."""
        prefix = self.id.partition(":")[0]
        return prefix if prefix in ("local", "s3") else "remote"

    @property
    def key(self) -> str:
        """This version of this source: the start of its result keys, and its kept decodes' key."""
        return f"{self.id}|{self.version}"


def is_remote(source: str) -> bool:
    head = source[:8].lower()
    return head.startswith("http:/") or head.startswith("https:/")


MAX_PATH = 1024  # characters; S3 keys end at 1024 bytes


def path_parts(source: str) -> list[str]:
    """The segments of a source path (local file or object key), or 400 for names that could climb
    out of the root or the prefix. Checked before anything is looked up."""
    if not source or len(source) > MAX_PATH:
        raise BadRequest(f"bad source path: empty or longer than {MAX_PATH} characters")
    if "\x00" in source or "\\" in source or source.startswith("/"):
        raise BadRequest("bad source path: absolute paths, backslashes and NUL are not allowed")
    parts = source.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BadRequest("bad source path: empty, '.' and '..' segments are not allowed")
    return parts


@dataclass(frozen=True)
class Resolved:
    """Where a source path led: its real path inside the root, its id, and the file it was."""

    path: str
    id: str
    device: int
    inode: int


class LocalSource:
    MAX_REMEMBERED = 4096  # resolutions kept; forgotten all at once past it

    def __init__(self, root: Path, max_bytes: int):
        self.root = root.resolve()
        self.max_bytes = max_bytes
        self._resolved: dict[str, Resolved] = {}

    def _joined(self, source: str) -> str:
        """The path under the root a source names, or 400 for names that could climb out of it."""
        return os.path.join(self.root, *path_parts(source))

    def resolve(self, source: str) -> Path:
        """The real path of `source` inside the root, or a 400/404. Never reads outside the root."""
        joined = self._joined(source)
        try:
            real = Path(os.path.realpath(joined))
        except (OSError, ValueError):
            raise BadRequest("bad source path") from None
        # commonpath, not a string prefix: /srv/images2 must not pass for /srv/images
        if os.path.commonpath([str(self.root), str(real)]) != str(self.root):
            raise NotFound("source not found")
        return real

    def load(self, source: str) -> Original:
        joined = self._joined(source)
        try:
            st = os.stat(joined)
        except (OSError, ValueError):
            raise NotFound("source not found") from None
        known = self._resolved.get(source)
        if known is None or (known.device, known.inode) != (st.st_dev, st.st_ino):
            known, st = self._resolve_file(source)
        if st.st_size > self.max_bytes:
            raise PayloadTooLarge(f"source is {st.st_size} bytes; the limit is {self.max_bytes}")
        return Original(
            id=known.id,
            version=f"{st.st_mtime_ns:x}-{st.st_size:x}",
            size=st.st_size,
            last_modified=st.st_mtime,
            path=known.path,
        )

    def _resolve_file(self, source: str) -> tuple[Resolved, os.stat_result]:
        path = self.resolve(source)
        try:
            st = path.stat()
        except (OSError, ValueError):
            raise NotFound("source not found") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound("source not found")
        resolved = Resolved(str(path), f"local:{path.relative_to(self.root).as_posix()}", st.st_dev, st.st_ino)
        if len(self._resolved) >= self.MAX_REMEMBERED:
            self._resolved.clear()
        self._resolved[source] = resolved
        return resolved, st
