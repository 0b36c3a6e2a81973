"""What an image is, from its first bytes: PNG, JPEG or WebP by their magic bytes, with the dimensions when the
header holds them. Nothing is decoded (Pillow is loaded only for a conversion, ``adapters/convert.py``).

What does not live here: fetching, size limits and storing (``adapters/mirror.py``), the decision to refuse a body
that is not an image (the mirror raises ``image_rejected`` when ``sniff_image`` answers None).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SNIFF_BYTES = 64 * 1024  # how much of the body is read before deciding what it is


@dataclass(frozen=True)
class ImageKind:
    content_type: str
    extension: str
    width: int | None
    height: int | None


def sniff_image(head: bytes) -> ImageKind | None:
    """Identify PNG, JPEG or WebP from the first bytes, with the dimensions when the header holds them."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        width = height = None
        if len(head) >= 24 and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
        return ImageKind("image/png", "png", width, height)
    if head.startswith(b"\xff\xd8\xff"):
        width, height = _jpeg_size(head)
        return ImageKind("image/jpeg", "jpg", width, height)
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        width, height = _webp_size(head)
        return ImageKind("image/webp", "webp", width, height)
    return None


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None, None


def _webp_size(data: bytes) -> tuple[int | None, int | None]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None, None
