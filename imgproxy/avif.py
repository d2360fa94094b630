"""AVIF through Pillow's own codec or, where Pillow was built without one, pillow-avif-plugin.

Stock Pillow wheels bundle libavif; a pillow-simd build (`make PILLOW=simd`, the image's
`--build-arg PILLOW=simd`) links the system's, and Debian 12's libavif 0.11 is older than the
1.0 Pillow needs. The plugin ships its own libavif (the same 1.x as Pillow's wheel) and registers
the AVIF reader and writer on import.
"""

from __future__ import annotations

from PIL import features

if not features.check("avif"):
    try:
        import pillow_avif  # noqa: F401
    except ImportError:  # no AVIF at all: AVAILABLE says so
        pass

AVAILABLE = features.check("avif") or "pillow_avif" in globals()
