"""Convert an image to the format a caller asked for (``output_format``/``output_quality``), with Pillow.

Pillow loads here, on the first conversion, never at import: a request without ``output_format`` (and the cold
start of both functions) does not pay for it. Memory is bounded by the service's largest image: the source is
refused before decoding when its header declares more than 2048×2048 pixels (the most the service asks for), so
a conversion holds the source file, one decoded RGB(A) frame (≤ 16 MiB) and the encoded output.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from imagegen.errors import ImageRejectedError
from imagegen.models import DEFAULT_QUALITY, MAX_SIDE

MAX_PIXELS = MAX_SIDE * MAX_SIDE
WEBP_METHOD = 1

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class Conversion:
    """What the stored file must be: ``format`` (png, jpeg, webp) and, for jpeg/webp, a quality 1–100."""

    format: str
    quality: int | None = None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def needed_for(self, content_type: str) -> bool:
        """A source already in the format, with no quality asked for, is stored as it is (no re-encoding)."""
        return content_type != self.content_type or self.quality is not None


def convert(data: bytes, conversion: Conversion, *, width: int | None, height: int | None) -> bytes:
    """``data`` (PNG, JPEG or WebP, already sniffed) encoded as ``conversion`` asks. ``width``/``height`` are the
    sniffed header's, checked before Pillow decodes anything."""
    if width is not None and height is not None and width * height > MAX_PIXELS:
        raise ImageRejectedError(f"the upstream's image is larger than {MAX_SIDE}x{MAX_SIDE} pixels")
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own decompression-bomb guard, at the service's largest size
    try:
        with Image.open(io.BytesIO(data)) as source:
            source.load()
            image: Image.Image = source
            if conversion.format == "jpeg" and image.mode not in ("RGB", "L"):
                image = image.convert("RGB")  # JPEG has no alpha
            elif image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            out = io.BytesIO()
            quality = conversion.quality if conversion.quality is not None else DEFAULT_QUALITY
            if conversion.format == "png":
                image.save(out, format="PNG", optimize=False, compress_level=6)
            elif conversion.format == "jpeg":
                image.save(out, format="JPEG", quality=quality, optimize=True)
            else:
                # method 1: libwebp's fast path, ~26 MB to encode 2048x2048 where methods 3-6 take ~96 MB (several
                # images convert at once in a 512 MB function) for files a few percent larger.
                image.save(out, format="WEBP", quality=quality, method=WEBP_METHOD)
            return out.getvalue()
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        # Pillow's errors for a file it cannot read; never its text (it may quote bytes of the file).
        raise ImageRejectedError("the upstream's image could not be decoded for conversion") from exc
