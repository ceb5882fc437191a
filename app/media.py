"""Corpus images for /media/{id}: the file the index metadata names for that id, and cached thumbnails of it.

The URL carries an item id, never a path: the id is looked up in the served index's metadata and only the image file
recorded there for that item is read. The file must still be a regular file in an image format the service decodes
(checked from its header), so even a damaged or hostile metadata row cannot make the service hand out another kind of file.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from app.errors import ApiError
from model.image_io import MAX_ASPECT_RATIO_LIMIT, SUPPORTED_FORMATS, ImageDecodeError, load_image

THUMBNAIL_MIN, THUMBNAIL_MAX = 16, 1024
THUMBNAIL_QUALITY = 85

# Registering Pillow's plugins is lazy and not thread-safe: do it once at import, before worker threads open files.
Image.init()
SERVED_FORMATS = [name for name in SUPPORTED_FORMATS if name in Image.OPEN]


@dataclass(frozen=True)
class MediaFile:
    """A corpus image that may be served."""

    path: Path
    media_type: str
    mtime_ns: int
    size: int


def item_image_file(index, item_id: str) -> MediaFile:
    """The image file the index's metadata records for `item_id`, checked to be a readable image (ApiError 404 otherwise)."""
    keys = index.metadata.keys_for_items([item_id], "image")
    if not keys:
        if index.metadata.keys_for_items([item_id], "text"):
            raise ApiError(404, "no_image", f"item {item_id!r} has no searchable image in index version {index.version}")
        raise ApiError(
            404, "item_not_found", f"no item {item_id!r} in index version {index.version}; ids come from search results"
        )
    record = index.metadata.fetch(keys.values())[next(iter(keys.values()))]
    if not record.source_path:
        raise ApiError(404, "no_image", f"item {item_id!r} has no image file recorded in index version {index.version}")
    try:
        path = Path(record.source_path).resolve(strict=True)
        stat = path.stat()
    except (OSError, RuntimeError):
        raise ApiError(404, "image_missing", f"the image of item {item_id!r} is no longer on the server") from None
    if not path.is_file():
        raise ApiError(404, "image_missing", f"the image of item {item_id!r} is not a regular file on the server")
    try:
        with Image.open(path, formats=SERVED_FORMATS) as image:
            media_type = Image.MIME.get(image.format or "", "application/octet-stream")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ApiError(404, "image_missing", f"the file recorded for item {item_id!r} is not a readable image") from None
    return MediaFile(path, media_type, stat.st_mtime_ns, stat.st_size)


class ThumbnailCache:
    """Thumbnails (JPEG bytes) of corpus images, least recently used evicted first; safe to use from worker threads."""

    def __init__(self, max_items: int, max_pixels: int) -> None:
        self.max_items = max_items
        self.max_pixels = max_pixels
        self._items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, media: MediaFile, size: int) -> bytes:
        """JPEG bytes of `media` scaled to fit in size x size (never enlarged)."""
        key = (str(media.path), media.mtime_ns, size)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        data = make_thumbnail(media.path, size, self.max_pixels)
        if self.max_items:
            with self._lock:
                self._items[key] = data
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        return data


def make_thumbnail(path: Path, size: int, max_pixels: int) -> bytes:
    """Decode `path` (upright RGB), shrink it to fit in size x size and encode it as JPEG."""
    try:
        # a thumbnail fits the image in a box (no shorter-side resize), so elongated corpus images are fine here
        image = load_image(path, max_pixels=max_pixels, draft_size=size, max_aspect_ratio=MAX_ASPECT_RATIO_LIMIT)
    except ImageDecodeError as exc:
        # the message would name a server path: say what is wrong without it
        raise ApiError(
            404, "image_missing", "the stored image of this item cannot be decoded (the corpus file is damaged)"
        ) from exc
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return out.getvalue()
