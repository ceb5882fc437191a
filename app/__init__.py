"""The HTTP search service (FastAPI + uvicorn): `python -m app`, or `app.main.create_app(settings)` as an ASGI app."""
