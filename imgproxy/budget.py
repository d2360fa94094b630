"""Memory and time a render may take: a byte budget for decoded pixels shared by the render
threads (with the decodes kept for reuse inside it) and a cooperative per-render deadline.

Bookkeeping only: no pixel work happens here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from PIL import Image

from .errors import Overloaded
from .heif import decoder_bytes
from .metrics import KEPT_DECODES


class Deadline:
    """Cooperative per-render time budget, checked between steps and frames."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise Overloaded(f"render took longer than the {self.seconds:g} s budget", retry_after=5)


@dataclass
class KeptDecode:
    """A decoded, mode-normalised source (stored orientation) kept for its next request."""

    key: str  # source id, version and decode scale (JPEG shrink-on-load)
    image: Image.Image
    orientation: int
    nbytes: int
    users: int = 0  # renders reading it now; an entry in use is never evicted
    hits: int = 0  # renders that reused it
    used_at: float = 0.0  # monotonic time it was kept or last reused


class MemoryBudget:
    """Bytes of decoded pixels the render threads may hold at once, kept decodes included.

    The thread pool bounds how many renders run; this bounds how much memory they take, so a
    burst of large cold images queues here instead of multiplying peak RSS. A render larger than
    the whole budget still runs, alone.

    Within the budget, up to `keep_limit` bytes of decoded sources stay for the next request of the
    same source at another size decoded at the same scale (srcset widths, lazyloader steps, upload
    presets), which then skips the decode, the largest part of a cold render. Kept decodes give way
    to renders: one that needs room evicts the least recently used before it waits.

    A decode is kept only when it is likely to be reused (`wanted`), and only while it is: one
    not reused for KEPT_IDLE seconds goes. With sources that do not repeat, keeping every decode
    held up to `keep_limit` of memory that no request ever read (bench/rss.py).
    """

    def __init__(self, limit: int, keep_limit: int = 0):
        self.limit = limit
        self.keep_limit = min(keep_limit, limit) if limit > 0 else 0
        self.used = 0
        self.kept: OrderedDict[int, KeptDecode] = OrderedDict()  # by id(), least recently used first
        self.kept_bytes = 0
        self.asked: OrderedDict[str, int] = OrderedDict()  # source -> renders that looked for a decode of it lately
        self.pending: Counter[str] = Counter()  # source -> its renders queued or running (`expecting`)
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def expecting(self, source: str):
        """Around a render of `source` from the moment it is queued: another render of the same
        source waiting behind it makes its decode worth keeping."""
        with self._changed:
            self.pending[source] += 1
        try:
            yield
        finally:
            with self._changed:
                self.pending[source] -= 1
                if not self.pending[source]:
                    del self.pending[source]

    def wanted(self, source: str) -> bool:
        """Whether a decode of `source` is likely to be read again: an earlier render of the
        source among the last ASKED_SOURCES looked for a decode of it too (srcset widths, lazyloader
        steps), or another render of the source is queued or running (upload presets, a page's
        widths at once). A source seen once (a feed of new photos) is never kept. Caller holds the lock."""
        return self.asked.get(source, 0) >= 2 or self.pending[source] >= 2

    @contextlib.contextmanager
    def hold(self, amount: int, deadline: Deadline, beside: int = 0):
        """`beside`: bytes the caller holds already (growing its hold); alone with those, it runs."""
        if self.limit <= 0:
            yield
            return
        with self._changed:
            while True:
                self._evict(self.limit - self.used - amount)
                if self.used <= beside or self.used + self.kept_bytes + amount <= self.limit:
                    break
                if not self._changed.wait(timeout=max(0.0, deadline.end - time.monotonic())):
                    deadline.check()
            self.used += amount
        try:
            yield
        finally:
            with self._changed:
                self.used -= amount
                self._changed.notify_all()

    def _evict(self, room: int) -> None:
        """Drop unused kept decodes, oldest first, until they take at most `room` bytes, and those
        idle for KEPT_IDLE seconds."""
        idle_since = time.monotonic() - KEPT_IDLE
        for entry in list(self.kept.values()):
            if entry.users:
                continue
            if self.kept_bytes > room or entry.used_at < idle_since:
                self._drop(entry)

    def _drop(self, entry: KeptDecode) -> None:
        del self.kept[id(entry)]
        self.kept_bytes -= entry.nbytes
        KEPT_DECODES.labels("dropped_used" if entry.hits else "dropped_unused").inc()

    def keep(self, key: str, source: str, image: Image.Image, orientation: int) -> KeptDecode | None:
        """Keep `image` (decode `key` of `source`) when it is wanted and fits (no copy: nothing else
        may change or close it) and pin it for the caller."""
        nbytes = decoded_bytes(image, working_set=1.0)
        if not 0 < nbytes <= self.keep_limit // 2:  # half of the limit: two sources fit side by side
            return None
        with self._changed:
            if not self.wanted(source):
                KEPT_DECODES.labels("declined").inc()
                return None
            self._evict(self.keep_limit - nbytes)
            if self.kept_bytes + nbytes > self.keep_limit:
                KEPT_DECODES.labels("declined").inc()
                return None
            entry = KeptDecode(key, image, orientation, nbytes, users=1, used_at=time.monotonic())
            self.kept[id(entry)] = entry
            self.kept_bytes += nbytes
            KEPT_DECODES.labels("kept").inc()
            return entry

    def find(self, key: str, source: str, size: tuple[int, int]) -> KeptDecode | None:
        """The kept decode `key` at exactly `size`, pinned for the caller. Never a larger one: a
        render's pixels must not depend on which decodes earlier renders left behind. Counts the
        look-up for `wanted`."""
        with self._changed:
            self.asked[source] = self.asked.pop(source, 0) + 1
            if len(self.asked) > ASKED_SOURCES:
                self.asked.popitem(last=False)
            for entry in reversed(self.kept.values()):
                if entry.key == key and entry.image.size == size:
                    entry.users += 1
                    entry.hits += 1
                    entry.used_at = time.monotonic()
                    KEPT_DECODES.labels("hit").inc()
                    self.kept.move_to_end(id(entry))
                    return entry
            return None

    def forget_kept(self) -> None:
        """Drop every kept decode (renders reading one keep it until they finish)."""
        with self._changed:
            for entry in list(self.kept.values()):
                self._drop(entry)
            self._changed.notify_all()

    def release(self, entry: KeptDecode | None) -> None:
        if entry is not None:
            with self._changed:
                entry.users -= 1
                self._changed.notify_all()  # an unpinned entry may now be evicted for a waiter


# Sources remembered for `wanted`: one asked for again after this many others is new again
ASKED_SOURCES = 256
# Seconds a kept decode stays without a reuse: a page's widths and upload presets come within a second
KEPT_IDLE = 10.0
UNLIMITED = MemoryBudget(0)
# Bytes a decoded pixel takes until the resize: Pillow keeps 2- and 3-band images in 4 bytes a
# pixel, and a mode the render converts first (render._normalise_mode) holds the stored pixels
# and the converted ones together: palette -> RGB(A) (1 + 4), 1-bit -> L (1 + 1), 16-bit -> I
# -> L (2 + 4 + 4), I/F -> L (4 + 1). Modes it takes as they are: L, LA, RGB, RGBA, CMYK.
BYTES_PER_PIXEL = {
    **{"L": 1, "LA": 4, "RGB": 4, "RGBA": 4, "CMYK": 4},
    **{"1": 2, "P": 5, "PA": 8, "I;16": 10, "I;16B": 10, "I;16L": 10, "I": 5, "F": 5},
}
OTHER_MODE_BYTES = 8  # anything else (YCbCr, LAB, RGBX, ...) is converted to RGB(A): 4 + 4
# the resize's intermediate adds about a third
WORKING_SET = 1.35


def decoded_bytes(image: Image.Image, working_set: float = WORKING_SET) -> int:
    """Memory a render of `image` needs at its current (possibly drafted) size."""
    pixels = int(image.width * image.height * BYTES_PER_PIXEL.get(image.mode, OTHER_MODE_BYTES) * working_set)
    return pixels + decoder_bytes(image)
