"""Indexing job and search library: embed a corpus with a trained model into versioned FAISS indexes and query them.

    from index import SearchIndex, build_index, BuildConfig, IndexConfig

    index.build     build_index / embed_shard / merge_shards / publish_version (the job; CLI: dscmr-index, python -m index)
    index.search    SearchIndex: load a version, search by text, image or vector, label filter, batch queries
    index.update    add_items / add_embedded / delete_items: copy-on-write updates without a rebuild
    index.store     version directories, atomic publish, the CURRENT pointer, manifests and verification
    index.metadata  the SQLite metadata store;  index.records  its read-optimised copy for building results
    index.faiss_index  factory strings, automatic index choice, id maps, removal, GPU use
    index.shards    per-shard embeddings on disk and their merge;  index.synthetic  clustered test/benchmark vectors

The names below are importable from the package itself; each is loaded on first use, so `import index.search` (what
the service does) does not load the build job's dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "SearchIndex": "index.search",
    "SearchHit": "index.search",
    "build_index": "index.build",
    "embed_shard": "index.build",
    "merge_shards": "index.build",
    "publish_version": "index.build",
    "BuildConfig": "index.build",
    "IndexConfig": "index.build",
    "add_items": "index.update",
    "add_embedded": "index.update",
    "delete_items": "index.update",
    "list_versions": "index.store",
    "read_current": "index.store",
    "set_current": "index.store",
    "resolve_version": "index.store",
    "prune_versions": "index.store",
    "load_manifest": "index.store",
    "IndexStoreError": "index.errors",
    "NoIndexVersionError": "index.errors",
    "IndexCorruptError": "index.errors",
    "IndexModelMismatchError": "index.errors",
    "ShardError": "index.errors",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from index.build import BuildConfig, IndexConfig, build_index, embed_shard, merge_shards, publish_version
    from index.errors import IndexCorruptError, IndexModelMismatchError, IndexStoreError, NoIndexVersionError, ShardError
    from index.search import SearchHit, SearchIndex
    from index.store import list_versions, load_manifest, prune_versions, read_current, resolve_version, set_current
    from index.update import add_embedded, add_items, delete_items


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
