"""load_image on generated files of every awkward kind real photo collections contain."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from model.image_io import ImageAspectRatioError, ImageDecodeError, load_image, to_rgb
from tests.fixtures_data import IMAGENET_SAMPLE, needs_real_imagenet, write_imagenet_sample

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _close(pixel, expected, tol):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that declares width x height RGB pixels but carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _left_red_right_blue(width=40, height=20) -> Image.Image:
    image = Image.new("RGB", (width, height), RED)
    image.paste(Image.new("RGB", (width // 2, height), BLUE), (width // 2, 0))
    return image


def _noise_jpeg(path: Path, size=(320, 240), quality=90) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG", quality=quality)
    return path.read_bytes()


def test_plain_jpeg_from_path_and_from_bytes(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(path, "JPEG", quality=95)
    for source in (path, str(path), path.read_bytes()):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (64, 48)
        assert _close(image.getpixel((32, 24)), (10, 200, 30), tol=4)


@pytest.mark.parametrize(
    ("orientation", "top_left", "bottom_right", "size"),
    [
        (1, RED, BLUE, (40, 20)),  # upright: left half red, right half blue
        (3, BLUE, RED, (40, 20)),  # rotated 180
        (6, RED, BLUE, (20, 40)),  # camera turned: display rotates 90 deg clockwise, left half -> top
        (8, BLUE, RED, (20, 40)),  # display rotates 90 deg counter-clockwise, left half -> bottom
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, top_left, bottom_right, size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated{orientation}.jpg"
    _left_red_right_blue().save(path, "JPEG", quality=95, exif=exif.tobytes())
    image = load_image(path)
    assert image.mode == "RGB" and image.size == size
    assert _close(image.getpixel((2, 2)), top_left, tol=40)
    assert _close(image.getpixel((image.width - 3, image.height - 3)), bottom_right, tol=40)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, "JPEG", quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB"
    assert _close(image.getpixel((16, 16)), RED, tol=6)


def test_grayscale_and_bilevel_images(tmp_path):
    Image.new("L", (10, 10), 77).save(tmp_path / "gray.png")
    Image.new("1", (10, 10), 1).save(tmp_path / "bits.bmp")
    assert load_image(tmp_path / "gray.png").getpixel((5, 5)) == (77, 77, 77)
    bits = load_image(tmp_path / "bits.bmp")
    assert bits.mode == "RGB" and bits.getpixel((5, 5)) == WHITE


def test_palette_png_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "opaque.png")
    opaque = load_image(tmp_path / "opaque.png")
    assert opaque.getpixel((4, 4)) == (200, 100, 50) and opaque.getpixel((0, 0)) == (0, 0, 0)

    palette.save(tmp_path / "transparent.png", transparency=0)  # index 0 (black) is see-through
    transparent = load_image(tmp_path / "transparent.png")
    assert transparent.mode == "RGB"
    assert transparent.getpixel((0, 0)) == WHITE
    assert transparent.getpixel((4, 4)) == (200, 100, 50)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 1))
    rgba.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 128), (0, 0, 255, 255)])
    rgba.save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png")
    assert [image.getpixel((x, 0)) for x in range(4)] == [RED, WHITE, (127, 127, 127), BLUE]

    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (100, 255)])
    la.save(tmp_path / "la.png")
    gray = load_image(tmp_path / "la.png")
    assert [gray.getpixel((x, 0)) for x in range(2)] == [WHITE, (100, 100, 100)]

    keyed = Image.new("RGB", (2, 1), (0, 255, 0))
    keyed.putpixel((1, 0), BLUE)
    keyed.save(tmp_path / "colour_key.png", transparency=(0, 255, 0))  # tRNS chunk: pure green is see-through
    assert Image.open(tmp_path / "colour_key.png").mode == "RGB"
    colour_key = load_image(tmp_path / "colour_key.png")
    assert [colour_key.getpixel((x, 0)) for x in range(2)] == [WHITE, BLUE]


def test_palette_with_alpha_in_memory():
    # Pillow cannot write "PA" files, so the conversion is checked on an in-memory image.
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 255, 0] + [0] * 765)
    pa.putdata([(0, 255), (0, 0)])
    assert [to_rgb(pa).getpixel((x, 0)) for x in range(2)] == [(0, 255, 0), WHITE]


def test_16_bit_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 30000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = load_image(tmp_path / "deep.png")
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 100, 255, round(30000 / 257)]


def test_32_bit_integer_and_float_tiff(tmp_path):
    Image.fromarray(np.array([[0, 25700, 65535]], dtype=np.int32)).save(tmp_path / "int.tif")
    Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32)).save(tmp_path / "signed.tif")
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "int.tif").mode == "I" and Image.open(tmp_path / "float.tif").mode == "F"

    def red_channel(path):
        return [load_image(path).getpixel((x, 0))[0] for x in range(3)]

    assert red_channel(tmp_path / "int.tif") == [0, 100, 255]
    assert red_channel(tmp_path / "signed.tif") == [0, 128, 255]  # unknown range: stretched
    assert red_channel(tmp_path / "float.tif") == [0, 128, 255]


def _alpha_reference(image: Image.Image) -> Image.Image:
    """The obvious whole-image composite on white (what to_rgb computes a band of rows at a time)."""
    rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")


def _high_bit_depth_reference(values: np.ndarray) -> np.ndarray:
    """The obvious whole-array rescale (what to_rgb computes a band of rows at a time, in integers for 16-bit)."""
    floats = values.astype(np.float64)
    finite = floats[np.isfinite(floats)]
    low, high = float(finite.min()), float(finite.max())
    if values.dtype.kind in "iu" and low >= 0 and high <= 65535:
        scaled = floats / 257.0
    elif values.dtype.kind == "f" and low >= 0 and high <= 1.0:
        scaled = floats * 255.0
    elif values.dtype.kind == "f" and low >= 0 and high <= 255.0:
        scaled = floats
    else:
        scaled = (floats - low) * (255.0 / (high - low))
    return np.round(np.nan_to_num(np.clip(scaled, 0, 255))).astype(np.uint8)


@pytest.mark.parametrize("band_pixels", [37, 1 << 20])
def test_banded_conversions_match_the_whole_image_reference(monkeypatch, band_pixels):
    import model.image_io as image_io

    monkeypatch.setattr(image_io, "_BAND_PIXELS", band_pixels)  # 37: a band of one row (53 px wide), or several rows
    rng = np.random.default_rng(7)
    size = (53, 41)
    rgba = Image.fromarray(rng.integers(0, 256, (41, 53, 4), dtype=np.uint8), "RGBA")
    palette = Image.fromarray(rng.integers(0, 8, (41, 53), dtype=np.uint8), "L").convert("P")
    palette.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
    palette.info["transparency"] = 3
    keyed = Image.fromarray(rng.integers(0, 2, (41, 53, 3), dtype=np.uint8) * 255, "RGB")
    keyed.info["transparency"] = (255, 0, 255)
    for image in (rgba, rgba.convert("LA"), rgba.convert("La"), rgba.convert("PA"), palette, keyed):
        assert image.size == size
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(_alpha_reference(image))), image.mode
    every_16_bit = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    floats = rng.normal(0, 1000, (41, 53)).astype(np.float32)
    floats[0, :3] = [np.nan, np.inf, -np.inf]
    for values in (
        every_16_bit,
        rng.integers(0, 65536, (41, 53)).astype(np.int32),
        rng.integers(-5000, 5000, (41, 53)).astype(np.int32),
        rng.random((41, 53)).astype(np.float32),
        (rng.random((41, 53)) * 255).astype(np.float32),
        floats,
    ):
        got = np.asarray(to_rgb(Image.fromarray(values)))[..., 0]
        assert np.array_equal(got, _high_bit_depth_reference(values)), values.dtype


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = load_image(tmp_path / "anim.gif")
    assert image.mode == "RGB" and image.getpixel((4, 4)) == RED


def test_format_comes_from_content_not_extension(tmp_path):
    lying = tmp_path / "really_a_jpeg.png"
    Image.new("RGB", (30, 20), BLUE).save(lying, "JPEG")
    image = load_image(lying)
    assert image.size == (30, 20) and _close(image.getpixel((15, 10)), BLUE, tol=6)


def test_text_file_is_not_an_image(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is a shopping list, not a photo\n" * 20)
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(text)
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(b"<html><body>404 not found</body></html>")


def test_truncated_jpeg_raises_and_global_state_is_untouched(tmp_path):
    data = _noise_jpeg(tmp_path / "full.jpg")
    assert load_image(data).size == (320, 240)
    for keep in (0.6, 0.05):
        with pytest.raises(ImageDecodeError, match=r"truncated|corrupt"):
            load_image(data[: int(len(data) * keep)])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_raises(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt"):
        load_image(data[: len(data) // 2])


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageDecodeError, match="does not exist"):
        load_image(tmp_path / "nowhere.jpg")
    with pytest.raises(TypeError, match="bytes or a path"):
        load_image(123)  # type: ignore[arg-type]


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # Each file declares a huge image but holds ~100 bytes: if pixels were decoded, the error would be
    # "truncated", not the pixel-limit message.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20_000, 20_000))  # 400 MP: Pillow's own hard limit trips in Image.open
    with pytest.raises(ImageDecodeError, match="decompression-bomb limit"):
        load_image(bomb)
    medium = _png_header_only(9_000, 9_000)  # 81 MP: below Pillow's limits, above our default 64 MP
    with pytest.raises(ImageDecodeError, match="9000x9000 = 81,000,000 pixels, more than the limit of 64,000,000"):
        load_image(medium)
    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt"):
        load_image(medium, max_pixels=100_000_000)  # allowed -> decoding starts -> the missing data shows
    with pytest.raises(ImageDecodeError, match="more than the limit of 1,000"):
        load_image(_png_header_only(40, 40), max_pixels=1_000)


@pytest.mark.parametrize("size", [(1, 8000), (8000, 1), (1, 8_400_000), (21, 1), (100, 2001)])
def test_extreme_aspect_ratios_are_refused_from_the_header(size):
    # header-only files: a decode would report "truncated", so the refusal comes before any pixel is read
    with pytest.raises(ImageAspectRatioError, match=r"aspect ratio of [\d,]+:1, more than the limit of 20:1.*Crop") as caught:
        load_image(_png_header_only(*size))
    assert caught.value.size == size and caught.value.limit == 20


def test_aspect_ratio_limit_is_inclusive_and_configurable():
    for size in ((1, 20), (20, 1), (100, 2000)):
        assert load_image(_png_bytes(Image.new("RGB", size, RED))).size == size
    assert load_image(_png_bytes(Image.new("RGB", (1, 50), RED)), max_aspect_ratio=50).size == (1, 50)
    with pytest.raises(ImageAspectRatioError, match="limit of 49:1"):
        load_image(_png_bytes(Image.new("RGB", (1, 50), RED)), max_aspect_ratio=49)
    for bad in (0.5, 101):
        with pytest.raises(ValueError, match="max_aspect_ratio"):
            load_image(_png_bytes(Image.new("RGB", (2, 2), RED)), max_aspect_ratio=bad)


def test_jpeg_draft_decodes_large_photo_at_reduced_size(tmp_path):
    path = tmp_path / "large.jpg"
    image = Image.new("RGB", (2000, 1600), RED)
    image.paste(Image.new("RGB", (1000, 1600), BLUE), (1000, 0))
    image.save(path, "JPEG", quality=90)
    assert load_image(path).size == (2000, 1600)
    reduced = load_image(path, draft_size=224)
    assert reduced.size == (500, 400)  # 1/4 scale: the largest reduction keeping both sides >= 224
    assert min(reduced.size) >= 224
    assert _close(reduced.getpixel((100, 200)), RED, tol=8) and _close(reduced.getpixel((400, 200)), BLUE, tol=8)
    assert load_image(path, draft_size=1500).size == (2000, 1600)  # 1/2 would give 800 < 1500: no reduction
    Image.new("RGB", (2000, 1600), RED).save(tmp_path / "large.png")
    assert load_image(tmp_path / "large.png", draft_size=224).size == (2000, 1600)  # draft is JPEG-only


def test_draft_with_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated_large.jpg"
    Image.new("RGB", (1600, 1200), RED).save(path, "JPEG", exif=exif.tobytes())
    image = load_image(path, draft_size=256)
    assert image.size == (300, 400)  # 1/4 of 1200x1600 after rotation


@pytest.fixture(params=["generated", pytest.param("real", marks=needs_real_imagenet)])
def photo_folder(request, tmp_path_factory) -> Path:
    """An imagenet-sample-wordnet folder: generated (24 photos, every third grayscale, the first three 1280x960), or the
    real one in ../shared/data (1,000 photos, 23 grayscale)."""
    if request.param == "real":
        return IMAGENET_SAMPLE
    return write_imagenet_sample(tmp_path_factory.mktemp("photos"), per_class=2, grayscale_every=3, large=3)


def test_photos_of_an_imagenet_sample_folder_decode_to_rgb(photo_folder):
    root = photo_folder
    files = [root / item["file"] for item in json.loads((root / "metadata.json").read_text())["items"]]
    # Header-only open is cheap; pick the grayscale photos plus a spread of the others.
    modes = {path: Image.open(path).mode for path in files}
    chosen = [p for p, m in modes.items() if m != "RGB"][:10] + files[:: max(1, len(files) // 10)]
    assert any(modes[p] != "RGB" for p in chosen), "expected some grayscale photos in the sample"
    for path in chosen:
        image = load_image(path, draft_size=256)
        assert image.mode == "RGB" and min(image.size) >= min(min(Image.open(path).size), 256)
        assert np.asarray(image).std() > 1.0  # real content, not a blank canvas


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize(
    "exif_block",
    [
        b"Exif\x00\x00garbage-not-tiff",
        b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff",  # IFD claims 65535 entries, holds none
        # well-formed little-endian IFD with Orientation = 9 (no such orientation)
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x09\x00\x00\x00",
    ],
)
def test_broken_exif_does_not_cost_the_photo(exif_block):
    buffer = io.BytesIO()
    _left_red_right_blue().save(buffer, "JPEG", quality=95, exif=exif_block)
    image = load_image(buffer.getvalue())
    assert image.size == (40, 20) and _close(image.getpixel((2, 2)), RED, tol=40)


def test_formats_that_run_external_programs_are_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(buffer, "EPS")  # decoding EPS would invoke Ghostscript
    with pytest.raises(ImageDecodeError, match="not one of the supported formats"):
        load_image(buffer.getvalue())
