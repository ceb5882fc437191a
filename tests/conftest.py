"""Fixtures shared across test modules (session-scoped ones must live here to be built once)."""

from tests.app_fixtures import api, app_artefacts, app_server  # noqa: F401  (pytest fixtures)
