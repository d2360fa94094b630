"""glibc allocator settings for a process that repeatedly allocates and frees large pixel buffers.

Without them, freed decode buffers stay in the heap and RSS ratchets up over a long run of
distinct cold images; with a trim threshold they go back to the OS after each render.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_ARENA_MAX = -8
TRIM_THRESHOLD = 128 * 1024
ARENAS = 2  # one per core here; more arenas only add fragmentation for the render threads


def tune() -> bool:
    """Apply the settings where glibc is the allocator; elsewhere do nothing."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENAS))
