"""imgproxy: a caching image proxy (starlette, Pillow, diskcache)."""
