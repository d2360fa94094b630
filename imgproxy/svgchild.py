"""The child process that draws one SVG (run by imgproxy.svg): `python -m imgproxy.svgchild W H FONT MEMORY`.

Reads the pre-scanned SVG from stdin and writes a PNG of it, fitted into W x H, to stdout. Kept apart
so the render deadline can kill it and an address-space limit bounds it; it imports nothing else.
"""

from __future__ import annotations

import resource
import sys

import resvg_py


def main(argv: list[str]) -> int:
    width, height, font, memory = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    # an allocation past it fails (resvg then aborts: a 415 for the parent) instead of growing the host's RSS
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    text = sys.stdin.buffer.read().decode("utf-8")
    family = "Aileron"  # the one font given: every generic and unknown family draws with it
    png = resvg_py.svg_to_bytes(
        svg_string=text,
        width=width,
        height=height,
        skip_system_fonts=True,  # system fonts differ between hosts: one URL, one answer
        font_files=[font] if font else [],
        font_family=family,
        serif_family=family,
        sans_serif_family=family,
        cursive_family=family,
        fantasy_family=family,
        monospace_family=family,
        resources_dir=None,  # nothing relative to resolve (the pre-scan allows #fragments only)
    )
    sys.stdout.buffer.write(bytes(png))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
