"""Indexing job and search library: embed a corpus with a trained model into versioned FAISS indexes and query them.

    index.build     build_index / embed_shard / merge_shards / publish_version (the job; CLI: python -m index)
    index.search    SearchIndex: load a version, search by text, image or vector, label filter, batch queries
    index.update    add_items / add_embedded / delete_items: copy-on-write updates without a rebuild
    index.store     version directories, atomic publish, the CURRENT pointer, manifests and verification
    index.metadata  the SQLite metadata store;  index.records  its read-optimised copy for building results
    index.faiss_index  factory strings, automatic index choice, id maps, removal, GPU use
    index.shards    per-shard embeddings on disk and their merge;  index.synthetic  clustered test/benchmark vectors
"""
