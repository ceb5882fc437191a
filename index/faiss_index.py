"""FAISS index construction: factory strings, the automatic choice, id handling, removal, search parameters and GPU use.

Every index holds L2-normalised float32 vectors under the inner-product metric, so scores are cosine similarities.
Ids ("keys") are int64 and chosen by us: IVF indexes store them natively (with a hashtable direct map so that vectors
can be reconstructed by key and removed); every other type is wrapped in `IndexIDMap2`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

try:
    import faiss
except ModuleNotFoundError as exc:  # the package's FAISS comes from an extra (pyproject.toml): say which
    raise ModuleNotFoundError(
        "FAISS is not installed. Install this package with one of its FAISS extras: pip install 'dscmr-search[cpu]' "
        "(any machine), or pip install 'dscmr-search[gpu]' on a Linux host with an NVIDIA driver (see the README)",
        name="faiss",
    ) from exc

from index.errors import IndexCorruptError

log = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
INDEX_KINDS = ("auto", "flat", "hnsw", "ivfpq")
# Exact search stays the automatic choice up to this many vectors: a 1024-d flat scan of 200k vectors costs ~0.2 GFLOP
# per query, a few milliseconds on one core.
DEFAULT_EXACT_MAX_VECTORS = 200_000
# PQ codebooks have 256 centroids per sub-quantizer; FAISS wants >= 39 training points per centroid.
MIN_TRAINING_POINTS = 39 * 256


@dataclass(frozen=True)
class IndexSpec:
    """What to build: the FAISS factory string of the core index and its search-time parameters."""

    kind: str  # "flat" | "hnsw" | "ivfpq" | "custom"
    factory: str  # core factory string, without the IDMap2 wrapper (e.g. "Flat", "HNSW32", "IVF1024,PQ128")
    ef_construction: int | None = None
    ef_search: int | None = None
    nprobe: int | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the version manifest)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexSpec":
        """Inverse of `to_dict`."""
        return cls(**data)


def default_memory_budget() -> int:
    """Half of this machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def default_nlist(n: int) -> int:
    """Number of IVF lists: the power of two nearest sqrt(n), with >= 39 training points per list."""
    nlist = 2 ** max(0, round(math.log2(max(1.0, math.sqrt(n)))))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return nlist


def default_pq_m(dim: int, max_code_bytes: int | None = None) -> int:
    """PQ sub-quantizers: one per 8 dimensions (8-bit codes), fewer when the code must fit `max_code_bytes`."""
    candidates = [m for m in range(dim // 2, 0, -1) if dim % m == 0 and m <= max(1, dim // 8)]
    for m in candidates:
        if max_code_bytes is None or m <= max_code_bytes:
            return m
    return candidates[-1]


def estimate_index_bytes(kind: str, n: int, dim: int, hnsw_m: int = 32, nlist: int = 1, pq_m: int = 1) -> int:
    """Rough resident size of an index of `n` vectors (vectors/codes, graph links, id maps, centroids)."""
    id_map = 16 * n  # IndexIDMap2: id array + reverse hash map (ivf: the hashtable direct map)
    if kind == "flat":
        return n * 4 * dim + id_map
    if kind == "hnsw":
        # level 0 keeps 2*M int32 links per vector, upper levels add ~1/M of that; plus offsets and levels.
        return n * (4 * dim + int(2 * hnsw_m * 4 * 1.1) + 16) + id_map
    if kind == "ivfpq":
        return n * (pq_m + 8) + id_map + nlist * dim * 4 + 256 * dim * 4
    raise ValueError(f"no size model for index kind {kind!r}")


def kind_of_factory(factory: str) -> str:
    """Classify a FAISS factory string as flat, hnsw, ivfpq or custom."""
    parts = [p.strip() for p in factory.split(",") if p.strip() and not p.strip().startswith("IDMap")]
    if parts == ["Flat"]:
        return "flat"
    if parts and re.fullmatch(r"HNSW\d+(_?Flat)?", parts[0]) and parts[1:] in ([], ["Flat"]):
        return "hnsw"
    if len(parts) == 2 and re.fullmatch(r"IVF\d+", parts[0]) and re.fullmatch(r"PQ\d+(x\d+)?(np)?", parts[1]):
        return "ivfpq"
    return "custom"


def choose_index_spec(
    n: int,
    dim: int,
    kind: IndexKind = "auto",
    factory: str | None = None,
    memory_budget_bytes: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
    nlist: int | None = None,
    pq_m: int | None = None,
    nprobe: int | None = None,
    exact_max_vectors: int = DEFAULT_EXACT_MAX_VECTORS,
) -> IndexSpec:
    """Pick the index for `n` vectors of `dim` dimensions: an explicit factory string, a named kind, or automatically.

    The automatic rule: exact search (Flat) while n <= `exact_max_vectors` and the vectors fit the memory budget;
    else HNSW (fast, high recall) when its vectors and graph fit; else IVF-PQ with the largest code that fits.
    """
    budget = default_memory_budget() if memory_budget_bytes is None else int(memory_budget_bytes)
    n_lists = nlist or default_nlist(n)
    if factory:
        found = kind_of_factory(factory)
        core = ",".join(p.strip() for p in factory.split(",") if not p.strip().startswith("IDMap"))
        m_match = re.match(r"HNSW(\d+)", core)
        return IndexSpec(
            found,
            core,
            ef_construction=ef_construction if m_match else None,
            ef_search=ef_search if m_match else None,
            nprobe=(nprobe or _default_nprobe(_factory_nlist(core))) if "IVF" in core else None,
            reason="factory string given",
        )
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index type {kind!r}; choose one of {INDEX_KINDS} or pass a FAISS factory string")
    if kind == "flat":
        return IndexSpec("flat", "Flat", reason="flat requested")
    if kind == "hnsw":
        return IndexSpec("hnsw", f"HNSW{hnsw_m}", ef_construction=ef_construction, ef_search=ef_search, reason="hnsw requested")
    if kind == "ivfpq":
        return _ivfpq_spec(n, dim, n_lists, pq_m, nprobe, budget, "ivfpq requested", strict=False)

    flat_bytes = estimate_index_bytes("flat", n, dim)
    if n <= exact_max_vectors and flat_bytes <= budget:
        return IndexSpec(
            "flat", "Flat", reason=f"n={n} <= {exact_max_vectors} and flat needs {flat_bytes} <= budget {budget} bytes"
        )
    hnsw_bytes = estimate_index_bytes("hnsw", n, dim, hnsw_m=hnsw_m)
    if hnsw_bytes <= budget:
        return IndexSpec(
            "hnsw",
            f"HNSW{hnsw_m}",
            ef_construction=ef_construction,
            ef_search=ef_search,
            reason=f"n={n} > {exact_max_vectors} (or flat over budget); hnsw needs {hnsw_bytes} <= budget {budget} bytes",
        )
    if n < MIN_TRAINING_POINTS:
        if flat_bytes <= budget:
            return IndexSpec("flat", "Flat", reason=f"too few vectors (n={n}) to train IVF-PQ; flat fits the budget")
        raise ValueError(
            f"{n} vectors of dim {dim} need {flat_bytes} bytes as a flat index, over the memory budget of {budget} bytes, "
            f"and are too few (< {MIN_TRAINING_POINTS}) to train IVF-PQ; raise --memory-budget"
        )
    return _ivfpq_spec(
        n,
        dim,
        n_lists,
        pq_m,
        nprobe,
        budget,
        f"flat ({flat_bytes}) and hnsw ({hnsw_bytes}) exceed the memory budget of {budget} bytes",
        strict=True,
    )


def _ivfpq_spec(
    n: int, dim: int, nlist: int, pq_m: int | None, nprobe: int | None, budget: int, reason: str, strict: bool
) -> IndexSpec:
    if pq_m is not None:
        if dim % pq_m:
            raise ValueError(f"PQ sub-quantizer count {pq_m} must divide the dimension {dim}")
        m = pq_m
    else:
        fixed = estimate_index_bytes("ivfpq", n, dim, nlist=nlist, pq_m=0)
        room = (budget - fixed) // max(1, n)
        if strict and room < 1:
            raise ValueError(
                f"even the smallest IVF-PQ index of {n} vectors needs more than the memory budget of {budget} bytes; "
                "raise --memory-budget or index fewer items"
            )
        m = default_pq_m(dim, max_code_bytes=max(1, room))
    return IndexSpec("ivfpq", f"IVF{nlist},PQ{m}", nprobe=nprobe or _default_nprobe(nlist), reason=reason)


def _factory_nlist(factory: str) -> int:
    found = re.search(r"IVF(\d+)", factory)
    return int(found.group(1)) if found else 1


def _default_nprobe(nlist: int) -> int:
    return max(1, min(nlist, max(8, nlist // 32)))


# ------------------------------------------------------------------------------------------------------- construction
def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IndexIVF inside `index` (through pre-transforms), or None when it is not an IVF index."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def core_of(index: faiss.Index) -> faiss.Index:
    """The index below the id map and any pre-transform, downcast to its concrete class."""
    idx = faiss.downcast_index(index)
    for _ in range(4):
        if isinstance(idx, (faiss.IndexIDMap2, faiss.IndexIDMap, faiss.IndexPreTransform)):
            idx = faiss.downcast_index(idx.index)
        else:
            break
    return idx


def _takes_ids_natively(index: faiss.Index) -> bool:
    """An IVF index, possibly below pre-transforms: it stores arbitrary int64 ids and removes by id itself."""
    idx = faiss.downcast_index(index)
    while isinstance(idx, faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    return isinstance(idx, faiss.IndexIVF)


def create_index(spec: IndexSpec, dim: int) -> faiss.Index:
    """An empty (possibly untrained) index for `spec` that accepts our int64 keys and can reconstruct by key."""
    try:
        core = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"FAISS cannot build factory string {spec.factory!r} for dimension {dim}: {exc}") from exc
    if _takes_ids_natively(core):
        index = core
        ivf_of(index).set_direct_map_type(faiss.DirectMap.Hashtable)
    else:
        index = faiss.index_factory(dim, "IDMap2," + spec.factory, faiss.METRIC_INNER_PRODUCT)
    apply_search_defaults(index, spec)
    core = core_of(index)
    if isinstance(core, (faiss.IndexIVFPQ, faiss.IndexPQ)):
        # The factory turns on polysemous training (codes ordered for Hamming filtering), which we never search with
        # and which costs ~10x the PQ training time.
        core.do_polysemous_training = False
    if isinstance(core, faiss.IndexHNSW) and spec.ef_construction:
        core.hnsw.efConstruction = spec.ef_construction
    return index


def apply_search_defaults(index: faiss.Index, spec: IndexSpec) -> None:
    """Set the spec's efSearch / nprobe on the index itself, so plain `index.search` calls use them."""
    core = core_of(index)
    if isinstance(core, faiss.IndexHNSW) and spec.ef_search:
        core.hnsw.efSearch = spec.ef_search
    ivf = ivf_of(index)
    if ivf is not None and spec.nprobe:
        ivf.nprobe = spec.nprobe


def training_sample_size(index: faiss.Index) -> int:
    """How many vectors `train_index` wants (0 when the index needs no training)."""
    if index.is_trained:
        return 0
    ivf = ivf_of(index)
    nlist = ivf.nlist if ivf is not None else 1
    return max(64 * nlist, 2 * MIN_TRAINING_POINTS)


def train_index(index: faiss.Index, sample: np.ndarray, use_gpu: bool | None = None) -> None:
    """Train `index` on `sample` (normalised float32), running the IVF k-means on a GPU when one is available."""
    if index.is_trained:
        return
    if len(sample) < MIN_TRAINING_POINTS:
        log.warning("training on only %d vectors (FAISS wants >= %d); recall will suffer", len(sample), MIN_TRAINING_POINTS)
    ivf = ivf_of(index)
    if ivf is not None and (gpu_available() if use_gpu is None else use_gpu):
        if not gpu_available():  # faiss-cpu's GPU helpers fail with a NameError, so ask before calling them
            log.warning("GPU clustering asked for, but FAISS has no GPU support or sees no GPU; training on the CPU")
        else:
            try:
                ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
            except (RuntimeError, AttributeError) as exc:  # a GPU build that cannot use the device: stay on the CPU
                log.warning("GPU clustering unavailable (%s); training on the CPU", exc)
    index.train(sample)
    if ivf is not None:
        ivf.clustering_index = None


def add_with_keys(index: faiss.Index, vectors: np.ndarray, keys: np.ndarray) -> None:
    """Add normalised vectors under the given int64 keys."""
    if len(vectors) != len(keys):
        raise ValueError(f"{len(vectors)} vectors but {len(keys)} keys")
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(keys, dtype=np.int64))


def supports_removal(index: faiss.Index) -> bool:
    """Whether FAISS can remove vectors from this index (flat-code and IVF indexes can; HNSW cannot)."""
    core = core_of(index)
    return isinstance(core, (faiss.IndexFlatCodes, faiss.IndexIVF))


def remove_keys(index: faiss.Index, keys: np.ndarray) -> int:
    """Remove vectors by key; return how many were removed. The index must `supports_removal`."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    if not len(keys):
        return 0
    # IDSelectorArray: the IVF hashtable direct map accepts no other selector for removal.
    return int(index.remove_ids(faiss.IDSelectorArray(keys)))


def reconstruct_keys(index: faiss.Index, keys: np.ndarray) -> np.ndarray:
    """The stored vectors (decoded, for compressed indexes) of the given keys."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    if not len(keys):
        return np.zeros((0, index.d), dtype=np.float32)
    return index.reconstruct_batch(keys)


def search_parameters(index: faiss.Index, selector: faiss.IDSelector | None, widen: int = 1) -> faiss.SearchParameters:
    """Per-call parameters: an id selector plus efSearch / nprobe widened `widen` times over the index defaults."""
    core = core_of(index)
    ivf = ivf_of(index)
    if isinstance(core, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = core.hnsw.efSearch * widen
    elif ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = min(ivf.nlist, ivf.nprobe * widen)
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


# -------------------------------------------------------------------------------------------------------------- io
def write_index(index: faiss.Index, path: Path) -> None:
    """Serialise `index` (always its CPU form) to `path`."""
    if hasattr(faiss, "GpuIndex") and isinstance(index, getattr(faiss, "GpuIndex")):
        index = faiss.index_gpu_to_cpu(index)
    faiss.write_index(index, str(path))


def read_index(path: Path, mmap: bool = False) -> faiss.Index:
    """Load an index file, turning FAISS's errors on damaged files into IndexCorruptError.

    `mmap`: map the stored vectors (the codes of flat, SQ and PQ indexes, an HNSW graph's vector storage) from the file
    instead of copying them into memory (FAISS's IO_FLAG_MMAP_IFC). Processes that map the same file share one copy in
    the page cache; searching gives the same results. A mapped index is read-only: adding or removing vectors aborts
    the process (a FAISS assertion), so only searching code may ask for it.
    """
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except RuntimeError as exc:
        raise IndexCorruptError(
            f"{path} cannot be read as a FAISS index ({str(exc).splitlines()[0]}); rebuild the index version"
        ) from exc


# --------------------------------------------------------------------------------------------------------------- gpu
def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class GpuSearcher:
    """A GPU copy of a flat or IVF index for unfiltered searches (FAISS GPU indexes take no id selectors)."""

    def __init__(self, index: faiss.Index) -> None:
        self.resources = faiss.StandardGpuResources()
        self.index = faiss.index_cpu_to_gpu(self.resources, 0, index)

    @classmethod
    def try_create(cls, index: faiss.Index) -> "GpuSearcher | None":
        """A GPU copy when a GPU is usable and the index type is supported there; None otherwise (search stays on the CPU)."""
        if not gpu_available() or isinstance(core_of(index), faiss.IndexHNSW):
            return None
        try:
            return cls(index)
        except (RuntimeError, AttributeError) as exc:
            log.warning("cannot copy the index to the GPU (%s); searching on the CPU", exc)
            return None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, keys) for each query."""
        return self.index.search(queries, k)


# --------------------------------------------------------------------------------------------------------- vectors
def normalise_rows(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """float32, C-contiguous, L2-normalised copy of a 2-D array; refuses NaN/inf and zero rows with a clear message."""
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, dim); got shape {x.shape}")
    faiss.normalize_L2(x)
    # NaN and inf survive normalisation as NaN, so one sum finds them; all-zero rows stay zero. (This runs on every
    # query: two reductions are several microseconds cheaper than checking every value and every norm separately.)
    total = float(x.sum())
    if total != total or abs(total) == float("inf"):
        bad = np.where(~np.isfinite(x).all(axis=1))[0][:5].tolist()
        raise ValueError(f"{what} contain NaN or infinite values (rows {bad}); the encoder output is broken")
    nonzero = x.any(axis=1)
    if not nonzero.all():
        raise ValueError(
            f"{what} contain all-zero rows ({np.where(~nonzero)[0][:5].tolist()}); they have no direction to compare"
        )
    return x
