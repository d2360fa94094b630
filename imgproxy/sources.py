"""Resolve a `/picture/<source>` into an `Original`: where its bytes are and which version they are.

Local files must resolve (symlinks included) inside the configured root; the version is the
file's mtime_ns and size, so replacing a file changes every cache key derived from it.
"""
from __future__ import annotations

import os
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


def is_remote(source: str) -> bool:
    head = source[:8].lower()
    return head.startswith("http:/") or head.startswith("https:/")


class LocalSource:
    def __init__(self, root: Path, max_bytes: int):
        self.root = root.resolve()
        self.max_bytes = max_bytes

    def resolve(self, source: str) -> Path:
        """The real path of `source` inside the root, or a 400/404. Never reads outside the root."""
        if not source or len(source) > 1024:
            raise BadRequest("bad source path: empty or longer than 1024 characters")
        if "\x00" in source or "\\" in source or source.startswith("/"):
            raise BadRequest("bad source path: absolute paths, backslashes and NUL are not allowed")
        parts = source.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise BadRequest("bad source path: empty, '.' and '..' segments are not allowed")
        try:
            real = Path(os.path.realpath(self.root.joinpath(*parts)))
        except (OSError, ValueError):
            raise BadRequest("bad source path") from None
        # commonpath, not a string prefix: /srv/images2 must not pass for /srv/images
        if os.path.commonpath([str(self.root), str(real)]) != str(self.root):
            raise NotFound("source not found")
        return real

    def load(self, source: str) -> Original:
        path = self.resolve(source)
        try:
            st = path.stat()
        except (OSError, ValueError):
            raise NotFound("source not found") from None
        if not path.is_file():
            raise NotFound("source not found")
        if st.st_size > self.max_bytes:
            raise PayloadTooLarge(f"source is {st.st_size} bytes; the limit is {self.max_bytes}")
        rel = path.relative_to(self.root).as_posix()
        return Original(
            id=f"local:{rel}",
            version=f"{st.st_mtime_ns:x}-{st.st_size:x}",
            size=st.st_size,
            last_modified=st.st_mtime,
            path=str(path),
        )
