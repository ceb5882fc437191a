"""`python -m app`: serve the search service with uvicorn (settings from DSCMR_* environment variables)."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    """Parse the few command-line overrides, read the settings and run uvicorn until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve DSCMR cross-modal search over HTTP. Every "
        "setting is an environment variable DSCMR_<NAME> (see app/settings.py); flags override them.",
    )
    parser.add_argument("--host", help="bind address (DSCMR_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (DSCMR_PORT, default 8000)")
    parser.add_argument("--index-root", help="index store root (DSCMR_INDEX_ROOT, default artifacts/index)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "index_root": args.index_root}.items() if v is not None}

    from app.settings import ServiceSettings

    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"DSCMR_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        print(f"invalid settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from app.server import serve

    return serve(settings, overrides)


if __name__ == "__main__":
    sys.exit(main())
