"""An image's width and height from its header, without decoding it.

OpenCV allocates the whole bitmap before it decodes a byte of pixel data: a
100-byte PNG whose header declares 60000x60000 asks for 10 GB. Reading the
size first lets the source refuse such a file (``capture.max_image_pixels``).
PNG, JPEG, GIF, BMP, WebP, TIFF and PNM (PBM/PGM/PPM/PFM) are understood; for
other formats ``None`` comes back and OpenCV's own limit (2^30 pixels) applies.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["image_size_wh"]

_HEAD_BYTES = 64 * 1024  # JPEG may put EXIF and thumbnails before its frame header


def image_size_wh(path: Path | str) -> tuple[int, int] | None:
    """The ``(width, height)`` an image file's header declares, or None when the format is not known here.

    Raises:
        OSError: The file cannot be read.
    """
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
        try:
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                return struct.unpack(">II", head[16:24])  # type: ignore[return-value]
            if head.startswith(b"\xff\xd8"):
                return _jpeg(f, head)
            if head[:6] in (b"GIF87a", b"GIF89a"):
                return struct.unpack("<HH", head[6:10])  # type: ignore[return-value]
            if head.startswith(b"BM"):
                w, h = struct.unpack("<ii", head[18:26])
                return abs(w), abs(h)
            if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
                return _webp(head)
            if head[:4] in (b"II*\x00", b"MM\x00*"):
                return _tiff(f)
            if len(head) > 2 and head[0:1] == b"P" and head[1:2] in b"123456Ff" and head[2:3].isspace():
                return _pnm(head)
        except (struct.error, ValueError, IndexError):
            return None
    return None


def _jpeg(f, head: bytes) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":
            byte = f.read(1)
        while byte == b"\xff":
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, *range(0xD0, 0xDA)):
            continue  # no length field
        (length,) = struct.unpack(">H", f.read(2))
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">xHH", f.read(5))
            return w, h
        f.seek(length - 2, 1)


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _tiff(f) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]
    f.seek(0)
    order = "<" if f.read(2) == b"II" else ">"
    f.seek(4)
    (offset,) = struct.unpack(order + "I", f.read(4))
    f.seek(offset)
    (count,) = struct.unpack(order + "H", f.read(2))
    size: dict[int, int] = {}
    for _ in range(min(count, 4096)):
        tag, kind, _n, value = struct.unpack(order + "HHI4s", f.read(12))
        if tag in (256, 257):
            fmt = "H" if kind == 3 else "I"
            size[tag] = struct.unpack(order + fmt, value[: struct.calcsize(fmt)])[0]
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


def _pnm(head: bytes) -> tuple[int, int] | None:
    tokens: list[bytes] = []
    for line in head[2:].splitlines():
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= 2:
            return int(tokens[0]), int(tokens[1])
    return None
