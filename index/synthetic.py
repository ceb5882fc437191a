"""Synthetic clustered unit vectors (for the index benchmark and the vector-level tests), generated block by block.

Each vector is a cluster centre (random unit vector) plus Gaussian variation of norm ~`spread`, L2-normalised. With
`intrinsic_dim` set, the variation lives in a fixed random subspace of that dimension (plus `floor_noise` of isotropic
noise): learned embeddings have an intrinsic dimension far below their width, and that is what makes them compressible
by product quantisation. Without it the variation is isotropic in all `dim` dimensions, the worst case for PQ.
Block b depends only on (seed, b), so a million 1,024-d vectors can be streamed (and regenerated identically) without
holding them all in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from model.corpus import Item


@dataclass(frozen=True)
class ClusteredVectors:
    """n vectors of `dim` dimensions around `n_clusters` random unit centres; `spread` is the noise norm per vector."""

    n: int
    dim: int
    n_clusters: int = 1000
    spread: float = 0.7
    seed: int = 0
    block_size: int = 65536
    n_labels: int = 20
    intrinsic_dim: int | None = None
    floor_noise: float = 0.1

    def centres(self) -> np.ndarray:
        """The cluster centres (n_clusters, dim), unit length."""
        c = np.random.default_rng([self.seed, 0]).standard_normal((self.n_clusters, self.dim), dtype=np.float32)
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    @property
    def n_blocks(self) -> int:
        """How many blocks the n vectors span."""
        return -(-self.n // self.block_size)

    def block(self, b: int, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows [b*block_size, ...) as (vectors float32 normalised, cluster ids)."""
        start, stop = b * self.block_size, min(self.n, (b + 1) * self.block_size)
        return self._draw(stop - start, [self.seed, 1, b], self.centres() if centres is None else centres)

    def blocks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first row, vectors, cluster ids) for every block, in order."""
        centres = self.centres()
        for b in range(self.n_blocks):
            vectors, clusters = self.block(b, centres)
            yield b * self.block_size, vectors, clusters

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """All n vectors at once (small n only)."""
        parts = list(self.blocks())
        return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    def queries(self, m: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """m fresh vectors from the same distribution (not in the collection)."""
        return self._draw(m, [self.seed, 2, stream], self.centres())

    def label_of(self, cluster: int) -> str:
        """The label of a cluster (clusters share n_labels labels)."""
        return f"label{cluster % self.n_labels:02d}"

    def items(self, first: int, clusters: np.ndarray) -> list[Item]:
        """Metadata items for rows first, first+1, ... with the given cluster ids."""
        return [
            Item(f"vec{first + i}", None, f"synthetic vector {first + i}", (self.label_of(int(c)),), {"cluster": int(c)})
            for i, c in enumerate(clusters)
        ]

    def basis(self) -> np.ndarray | None:
        """Orthonormal (intrinsic_dim, dim) basis of the variation subspace, or None for isotropic variation."""
        if self.intrinsic_dim is None:
            return None
        g = np.random.default_rng([self.seed, 3]).standard_normal((self.dim, self.intrinsic_dim))
        return np.linalg.qr(g)[0].T.astype(np.float32)

    def _draw(self, m: int, seed: list[int], centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        clusters = rng.integers(0, self.n_clusters, size=m)
        basis = self.basis()
        if basis is None:
            noise = rng.standard_normal((m, self.dim), dtype=np.float32) * np.float32(self.spread / np.sqrt(self.dim))
        else:
            z = rng.standard_normal((m, len(basis)), dtype=np.float32) * np.float32(self.spread / np.sqrt(len(basis)))
            noise = z @ basis
            noise += rng.standard_normal((m, self.dim), dtype=np.float32) * np.float32(self.floor_noise / np.sqrt(self.dim))
        x = centres[clusters] + noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32, copy=False), clusters


class ClusteredSource:
    """An EmbeddingSource that streams a ClusteredVectors collection into one modality (bounded memory)."""

    def __init__(self, data: ClusteredVectors, modality: str = "image", limit: int | None = None) -> None:
        self.data = data
        self.dim = data.dim
        self.modality = modality
        self.limit = data.n if limit is None else min(limit, data.n)

    def modalities(self) -> list[str]:
        """The single modality this source fills."""
        return [self.modality]

    def count(self, modality: str) -> int:
        """How many vectors are streamed."""
        return self.limit if modality == self.modality else 0

    def batches(self, modality: str) -> Iterator[tuple[np.ndarray, list[Item]]]:
        """(vectors, items) block by block, up to `limit` rows."""
        for first, vectors, clusters in self.data.blocks():
            if first >= self.limit:
                return
            take = min(len(vectors), self.limit - first)
            yield vectors[:take], self.data.items(first, clusters[:take])

    def sample(self, modality: str, n: int, seed: int) -> np.ndarray:
        """The first `n` rows of the first blocks (the blocks are already random draws)."""
        parts, have = [], 0
        for first, vectors, _ in self.data.blocks():
            if have >= n or first >= self.limit:
                break
            take = min(len(vectors), n - have, self.limit - first)
            parts.append(vectors[:take])
            have += take
        return np.concatenate(parts)
