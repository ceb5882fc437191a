"""Memory and time one image search spends on the picture itself (decode + resize for the backbone), for the largest
and most awkward images the service accepts at its default limits, and for the elongated ones it refuses.

    python bench/bench_image_budget.py

Each image file is made here, then decoded in a fresh Python process that measures the growth of its
peak resident memory (ru_maxrss) and the wall time of the service's own decode (app.main.decode_image, with the
DSCMR_MAX_IMAGE_PIXELS / DSCMR_MAX_IMAGE_ASPECT_RATIO defaults) followed by EfficientNet-Lite0's preprocessing (shorter
side to 256 px, centre crop 224). The backbone's forward pass that follows costs the same for every image. Prints a table
and writes docs/results/image-budget.json (`--out PATH` elsewhere) with the command, date, git commit and the machine
as detected before and after.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "image-budget.json"


def cases(max_pixels: int) -> dict[str, tuple[str, tuple[int, int], str]]:
    """name -> (Pillow mode, size, file format): the largest square each limit allows, and refused thin shapes."""
    side = math.isqrt(max_pixels)
    return {
        f"RGB PNG {side}x{side}": ("RGB", (side, side), "PNG"),
        f"RGBA PNG {side}x{side}": ("RGBA", (side, side), "PNG"),
        f"palette PNG with transparency {side}x{side}": ("P", (side, side), "PNG"),
        f"16-bit grey PNG {side}x{side}": ("I;16", (side, side), "PNG"),
        f"JPEG {side}x{side}": ("RGB", (side, side), "JPEG"),
        "grey PNG 1x8000 (refused)": ("L", (1, 8000), "PNG"),
        "grey PNG 1x8400000 (refused)": ("L", (1, 8_400_000), "PNG"),
    }


def image_file(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    """The bytes of a smooth (highly compressible, so small to upload) image file of that mode and size."""
    from PIL import Image

    colour = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 128), "I;16": 30000}.get(mode, 100)
    image = Image.new(mode, size, colour)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"transparency": 100} if mode == "P" else {}))
    return buffer.getvalue()


def measure_one(path: Path) -> dict:
    """Decode + preprocess one image file in this process; its peak-memory growth and time."""
    sys.path.insert(0, str(REPO))
    from app.errors import ApiError
    from app.main import decode_image
    from app.settings import ServiceSettings
    from model.image_backbones import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess

    settings = ServiceSettings()
    data = path.read_bytes()
    preprocess = ImagePreprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        image = decode_image(data, settings.max_image_pixels, preprocess.resize, settings.max_image_aspect_ratio)
        preprocess.to_tensor_batch([image])
        outcome = "searched"
    except ApiError as exc:
        outcome = f"{exc.status} {exc.code}"
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {
        "file_bytes": len(data),
        "outcome": outcome,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "peak_memory_growth_mib": round(grown / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every case in its own process, print the table, write the JSON."""
    args_in = sys.argv[1:] if argv is None else argv
    if len(args_in) == 2 and args_in[0] == "--one":
        print(json.dumps(measure_one(Path(args_in[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(args_in)
    sys.path.insert(0, str(REPO))
    from app.settings import ServiceSettings
    from bench.provenance import finish_record, run_record

    record = run_record("bench_image_budget.py", args_in)
    settings = ServiceSettings()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, (mode, size, fmt) in cases(settings.max_image_pixels).items():
            path = Path(scratch) / "image"
            path.write_bytes(image_file(mode, size, fmt))
            done = subprocess.run(
                [sys.executable, __file__, "--one", str(path)],
                capture_output=True,
                text=True,
                check=True,
                env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
            )
            rows.append({"case": name, "pixels": size[0] * size[1], **json.loads(done.stdout.strip().splitlines()[-1])})
    print(f"{'case':<44} {'file bytes':>11} {'outcome':>26} {'seconds':>8} {'CPU s':>7} {'peak MiB':>9}")
    for row in rows:
        print(
            f"{row['case']:<44} {row['file_bytes']:>11,} {row['outcome']:>26} {row['seconds']:>8.2f} "
            f"{row['cpu_seconds']:>7.2f} {row['peak_memory_growth_mib']:>9.0f}"
        )
    result = finish_record(
        {
            **record,
            "limits": {"max_image_pixels": settings.max_image_pixels, "max_image_aspect_ratio": settings.max_image_aspect_ratio},
            "cases": rows,
            "worst": {
                "seconds": max(r["seconds"] for r in rows),
                "cpu_seconds": max(r["cpu_seconds"] for r in rows),
                "peak_memory_growth_mib": max(r["peak_memory_growth_mib"] for r in rows),
            },
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"worst: {result['worst']['peak_memory_growth_mib']:.0f} MiB, {result['worst']['seconds']:.2f} s wall, "
        f"{result['worst']['cpu_seconds']:.2f} s CPU -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
