"""Decoding of user images (real photos: EXIF-rotated, CMYK, 16-bit, transparent, truncated, huge) to 8-bit RGB."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Formats a search service has reason to accept. Restricting Image.open to these keeps
# Pillow away from plugins that shell out (EPS -> Ghostscript) or parse exotic containers.
# Phone-camera MPO files (a JPEG with extra frames) open through the JPEG entry and report format "MPO".
# AVIF is used only where this Pillow build has it.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM", "ICO")

DEFAULT_MAX_PIXELS = 64_000_000
# Preprocessing scales an image's shorter side to the backbone's size (~256 px), so its longer side grows with the aspect
# ratio: a 1 x 8000 px PNG of 95 bytes would become 256 x 2,048,000 px (1.5 GB) before its centre is cut out. Images more
# elongated than this are refused from their header (real photo collections stay far below: ImageNet's worst is 3.4:1).
DEFAULT_MAX_ASPECT_RATIO = 20.0
MAX_ASPECT_RATIO_LIMIT = 100.0  # the most any caller may allow: 256 px x 100 = a 25,600 px long side after the resize

# Pillow's decoders raise a zoo of exception types on corrupt data.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, TypeError, struct.error, zlib.error)

_WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """An input that cannot be turned into an RGB image; the message says what is wrong and what to do."""


class ImageAspectRatioError(ImageDecodeError):
    """An image too elongated to preprocess (see DEFAULT_MAX_ASPECT_RATIO); refused from its header, before decoding."""

    def __init__(self, label: str, size: tuple[int, int], limit: float) -> None:
        width, height = size
        self.size = size
        self.limit = limit
        self.ratio = max(width, height) / min(width, height)
        super().__init__(
            f"{label} is {width}x{height} px, an aspect ratio of {self.ratio:,.0f}:1, more than the limit of {limit:g}:1; "
            f"refusing to decode it (the model would see only a sliver from its middle, at great cost). "
            f"Crop it to the part to search with, or pad it to a squarer shape"
        )


def aspect_ratio_exceeds(size: tuple[int, int], limit: float) -> bool:
    """Whether a width x height is more elongated than limit:1."""
    width, height = size
    return max(width, height) > limit * min(width, height)


def load_image(
    source: bytes | bytearray | memoryview | str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> Image.Image:
    """Decode an image file or its bytes to an upright, fully loaded 8-bit RGB PIL image.

    The format is detected from the content, never from the file name. `max_pixels` bounds the
    size the header may declare; it is checked before any pixel is decoded. `draft_size`, when
    given, lets JPEGs decode at 1/2, 1/4 or 1/8 scale as long as both sides stay >= draft_size
    (a caller that resizes the shorter side to N anyway passes N and loses nothing).
    `max_aspect_ratio` refuses images more elongated than that (ImageAspectRatioError), also from the header.
    Raises ImageDecodeError for anything that is not a complete, supported image.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if not 1.0 <= max_aspect_ratio <= MAX_ASPECT_RATIO_LIMIT:
        raise ValueError(f"max_aspect_ratio must be between 1 and {MAX_ASPECT_RATIO_LIMIT:g}, got {max_aspect_ratio}")
    if draft_size is not None and draft_size <= 0:
        raise ValueError(f"draft_size must be positive or None, got {draft_size}")
    label, stream = _open_source(source)
    with stream:
        try:
            opened = Image.open(stream, formats=_available_formats())
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(
                f"{label} is not an image (or not one of the supported formats {', '.join(SUPPORTED_FORMATS)}); "
                f"pass a photo file such as JPEG or PNG"
            ) from exc
        except Image.DecompressionBombError as exc:
            raise _too_many_pixels(label, None, max_pixels) from exc
        except _DECODE_ERRORS as exc:
            raise ImageDecodeError(f"{label} has a corrupt image header ({exc}); re-export or re-download the file") from exc
        with opened as image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError(f"{label} declares an empty image ({width}x{height} px); the file is broken")
            if width * height > max_pixels:
                raise _too_many_pixels(label, (width, height), max_pixels)
            if aspect_ratio_exceeds((width, height), max_aspect_ratio):
                raise ImageAspectRatioError(label, (width, height), max_aspect_ratio)
            if draft_size is not None and image.format in ("JPEG", "MPO"):
                image.draft(None, (draft_size, draft_size))
            try:
                image.load()
            except Image.DecompressionBombError as exc:
                raise _too_many_pixels(label, (width, height), max_pixels) from exc
            except _DECODE_ERRORS as exc:
                raise ImageDecodeError(
                    f"{label} could not be decoded, it is truncated or corrupt ({type(exc).__name__}: {exc}); "
                    f"re-download or re-export the file"
                ) from exc
            _apply_exif_orientation(image, label)
            try:
                rgb = to_rgb(image)
            except ValueError as exc:
                raise ImageDecodeError(f"{label}: {exc}") from exc
    if rgb is image:
        # Keep nothing that refers to the (now closed) file object.
        rgb = rgb.copy()
    return rgb


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded PIL image of any common mode to 8-bit RGB (alpha composited on white, >8-bit rescaled)."""
    try:
        return _convert_to_rgb(image)
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"image mode {image.mode!r} cannot be converted to RGB ({exc}); convert the file to an 8-bit RGB JPEG or PNG"
        ) from exc


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    """to_rgb without the error wrapping."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_bit_depth_to_uint8(np.asarray(image))).convert("RGB")
    # "transparency" in info: a PNG tRNS chunk / GIF transparent index marking one colour see-through.
    has_alpha = mode in ("PA", "LA", "La", "RGBA", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    if not has_alpha:
        return image if mode == "RGB" else image.convert("RGB")
    # Composited a band of rows at a time (each pixel's result depends on that pixel only): the temporaries of a whole
    # 40 MP image (RGBA copy, white canvas, composite) would add three times its size to the decoded image.
    width, height = image.size
    out = Image.new("RGB", image.size)
    for top, bottom in _row_bands(height, width):
        band = image.crop((0, top, width, bottom))  # keeps the palette and the transparency key
        # La (premultiplied) has no direct converter to RGBA; going through "LA" keeps the alpha channel.
        band = (band.convert("LA") if mode == "La" else band).convert("RGBA")
        white = Image.new("RGBA", band.size, (*_WHITE, 255))
        out.paste(Image.alpha_composite(white, band).convert("RGB"), (0, top))
    return out


_BAND_PIXELS = 1 << 20  # pixels per band of rows converted at a time (a few MB of temporaries)


def _row_bands(height: int, width: int) -> list[tuple[int, int]]:
    """(top, bottom) row ranges of about _BAND_PIXELS pixels each, covering 0..height."""
    rows = max(1, _BAND_PIXELS // max(width, 1))
    return [(top, min(top + rows, height)) for top in range(0, height, rows)]


def _high_bit_depth_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 16-bit / 32-bit integer or float grey values to 0..255 without clipping detail away.

    Works on bands of rows: float64 temporaries of a whole 40 MP image would be several times 320 MB."""
    out = np.empty(values.shape, dtype=np.uint8)
    bands = _row_bands(values.shape[0], int(np.prod(values.shape[1:], dtype=np.int64)))
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        for top, bottom in bands:
            # round(v / 257) in integers: no 16-bit v / 257 ends in exactly .5, so (v + 128) // 257 is the same number
            out[top:bottom] = (values[top:bottom].astype(np.uint32) + 128) // 257
        return out
    low, high = np.inf, -np.inf
    for top, bottom in bands:
        floats = values[top:bottom].astype(np.float64)
        finite = floats[np.isfinite(floats)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    if low > high:  # no finite value at all
        out.fill(0)
        return out
    if values.dtype.kind in "iu" and low >= 0 and high <= 65535:

        def scale(floats):
            return floats / 257.0  # 32-bit "I" holding 16-bit samples (TIFF, old Pillow PNG)
    elif values.dtype.kind == "f" and low >= 0 and high <= 1.0:

        def scale(floats):
            return floats * 255.0
    elif values.dtype.kind == "f" and low >= 0 and high <= 255.0:

        def scale(floats):
            return floats
    else:
        # Unknown range (signed or HDR data): stretch what is there to the full 8-bit range.
        def scale(floats):
            return (floats - low) * (255.0 / (high - low)) if high > low else np.zeros_like(floats)

    for top, bottom in bands:
        out[top:bottom] = np.round(np.nan_to_num(np.clip(scale(values[top:bottom].astype(np.float64)), 0, 255)))
    return out


def _available_formats() -> tuple[str, ...]:
    """The supported formats this Pillow build can open (Image.open rejects unknown names)."""
    Image.init()
    return tuple(name for name in SUPPORTED_FORMATS if name in Image.OPEN)


def _apply_exif_orientation(image: Image.Image, label: str) -> None:
    """Rotate/flip in place as the EXIF orientation tag says (in place: no copy of an upright image); a broken EXIF
    block leaves the pixels as stored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # noqa: BLE001 -- metadata damage must not cost us a decodable photo
        logger.warning("%s: ignoring unreadable EXIF orientation (%s: %s)", label, type(exc).__name__, exc)


def _open_source(source: bytes | bytearray | memoryview | str | Path) -> tuple[str, BinaryIO]:
    """Return a human label and a readable binary stream for bytes or a file path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageDecodeError("the uploaded image is empty (0 bytes); send the file content")
        return f"image bytes ({len(data)} B)", io.BytesIO(data)
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = f"image file {str(path)!r}"
        if not path.is_file():
            raise ImageDecodeError(f"{label} does not exist or is not a regular file; check the path")
        try:
            stream = path.open("rb")
        except OSError as exc:
            raise ImageDecodeError(f"{label} cannot be read ({exc}); check its permissions") from exc
        if path.stat().st_size == 0:
            stream.close()
            raise ImageDecodeError(f"{label} is empty (0 bytes); re-download or re-export it")
        return label, stream
    raise TypeError(f"load_image takes bytes or a path (str / pathlib.Path), got {type(source).__name__}")


def _too_many_pixels(label: str, size: tuple[int, int] | None, max_pixels: int) -> ImageDecodeError:
    """Error for images whose declared size exceeds the decompression-bomb limit."""
    if size is None:
        # Pillow refused in Image.open itself: its own hard limit applies whatever max_pixels says.
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return ImageDecodeError(
            f"{label} declares more than {pillow_limit:,} pixels (Pillow's decompression-bomb limit; ours is "
            f"{max_pixels:,}); refusing to decode it. Downscale the image before sending it"
        )
    return ImageDecodeError(
        f"{label} declares {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more than the limit of "
        f"{max_pixels:,}; refusing to decode it (possible decompression bomb). Downscale the image, "
        f"or raise max_pixels if it is genuine"
    )
