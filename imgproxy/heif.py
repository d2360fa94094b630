"""HEIC/HEIF sources through pillow-heif (libheif), registered as a Pillow plugin on import: a
stand-in opener that loads pillow-heif (libheif and its codecs, ~3 MB a process) at the first HEIF
file, so a server that never sees one does not carry it.

Opening reads only the container: the size pillow-heif reports is the `ispe` box's (after the
container's rotation), so the loader's limits apply before any pixel is decoded. libheif applies
the container's `irot`/`imir` when decoding, and pillow-heif resets the EXIF orientation to 1
(keeping the old value in info["original_orientation"]) so it is never applied on top. The EXIF
value then only matters for a file whose container has no rotation or mirror of its own: it is
put back for the render to apply, so the orientation is applied exactly once whichever carries it.

libheif decodes a truncated file without an error, filling the missing tiles with one colour: a
file whose top-level boxes (the image data's `mdat` among them) run past its end is refused.
"""

from __future__ import annotations

import functools
import struct
from typing import IO, BinaryIO

from PIL import Image, ImageFile

# The brands pillow-heif opens (its as_plugin._is_supported_heif)
BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")


@functools.cache
def register() -> None:
    """pillow-heif's plugin in place of the stand-in."""
    from pillow_heif import register_heif_opener

    # Thumbnails, depth maps and auxiliary images are never used: skip reading them.
    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def _accept(prefix: bytes) -> bool:
    return prefix[4:8] == b"ftyp" and prefix[8:12] in BRANDS


def _open(fp: IO[bytes], filename: str | bytes) -> ImageFile.ImageFile:
    register()
    factory, _ = Image.OPEN["HEIF"]
    return factory(fp, filename)


Image.register_open("HEIF", _open, _accept)

CONTAINER_ORIENTATION = ("irot", "imir")
# While Pillow copies the pixels in, libheif holds its YCbCr planes (1.5 bytes a pixel at 4:2:0,
# 3 past 8 bits) and its RGB output (3): a render of the 8.5-MP iPhone photo peaks at ~8.4 bytes
# a pixel, against the 5.4 the budget counts for an RGB decode.
DECODER_BYTES_PER_PIXEL = 6


def decoder_bytes(image: Image.Image) -> int:
    """Memory libheif takes beside Pillow's pixels when `image`, a HEIF not decoded yet, decodes
    (pillow-heif drops its file, and libheif's buffers, after the load)."""
    if getattr(image, "_heif_file", None) is None:
        return 0
    return image.width * image.height * DECODER_BYTES_PER_PIXEL


def restore_exif_orientation(image: Image.Image) -> None:
    """Give the render the EXIF orientation of a HEIF whose container does not orient it."""
    orientation = image.info.get("original_orientation")
    if not isinstance(orientation, int) or not 2 <= orientation <= 8:
        return
    heif = getattr(image, "_heif_file", None)
    if heif is None:
        return
    transformations = heif[heif.primary_index]._c_image.transformations
    if any(t[0] in CONTAINER_ORIENTATION for t in transformations):
        return  # libheif turns it upright while decoding
    image.getexif()[0x0112] = orientation  # the render reads the orientation from here


def truncated(fp: BinaryIO) -> bool:
    """Whether a top-level ISOBMFF box declares more bytes than the file has (reads box headers only)."""
    end = fp.seek(0, 2)
    offset = 0
    while offset + 8 <= end:
        fp.seek(offset)
        size, _ = struct.unpack(">I4s", fp.read(8))
        if size == 1:  # a 64-bit size follows the type
            header = fp.read(8)
            if len(header) < 8:
                return True
            size = struct.unpack(">Q", header)[0]
        elif size == 0:  # the box runs to the end of the file
            return False
        if size < 8:
            return True  # not a box: a corrupt file is refused like a short one
        offset += size
    return offset != end
