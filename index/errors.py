"""Errors of the index package: each says what is wrong and what to do about it."""

from __future__ import annotations


class IndexStoreError(ValueError):
    """An index root or version that cannot be used as asked."""


class NoIndexVersionError(IndexStoreError):
    """The index root has no published version yet (or the path is not an index at all)."""


class IndexCorruptError(IndexStoreError):
    """A version's manifest or one of its files is damaged, truncated or was modified after publishing."""


class IndexModelMismatchError(IndexStoreError):
    """The index was built by another model (content hash or dimension differ from the one in use)."""


class ShardError(IndexStoreError):
    """Shard outputs that cannot be merged: missing, incomplete, or made from another model or corpus."""
