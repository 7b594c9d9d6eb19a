"""`recsys index`: check, and rebuild when absent, the champion retriever's FAISS index.

`recsys train` builds the index with the model and logs both together, so this stage normally only
verifies it: exact search must return the brute-force top items for a sample of item queries. A missing
index (for example after copying only the embeddings) is rebuilt from `item_embeddings.npy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.console import Console

from recsys.config import PipelineConfig
from recsys.state import StateDir

SAMPLE_QUERIES = 64
TOP = 10
MIN_IVF_AGREEMENT = 0.9
console = Console(stderr=True)


class IndexCheckError(ValueError):
    """The stored index disagrees with the stored item embeddings."""


@dataclass(frozen=True)
class IndexSummary:
    model_version: str
    n_items: int
    dim: int
    rebuilt: bool
    agreement: float  # share of top-10 scores equal to brute force, over sample item queries


def run_index(config: PipelineConfig, dataset_version: str | None = None) -> IndexSummary:
    """Verify (or rebuild) the FAISS index of the champion two-tower model.

    Args:
        config: pipeline configuration (state_dir).
        dataset_version: accepted for symmetry with other stages; the champion decides the index.
    """
    from training.index import INDEX_FILE, ItemIndex
    from training.registry import TWO_TOWER_MODEL, load_champion

    state = StateDir(config.state_dir)
    directory, version = load_champion(state, TWO_TOWER_MODEL)
    embeddings = np.load(directory / "item_embeddings.npy")
    index_dir = directory / "index"
    rebuilt = not (index_dir / INDEX_FILE).exists()
    if rebuilt:
        with console.status(f"building the FAISS index over {len(embeddings)} items"):
            ItemIndex.build(embeddings, np.arange(len(embeddings)), config.two_tower.index).save(index_dir)
    index = ItemIndex.load(index_dir, config.two_tower.index.use_gpu)
    if len(index) != len(embeddings) or index.dim != embeddings.shape[1]:
        raise IndexCheckError(f"index holds {len(index)}x{index.dim}, embeddings are {embeddings.shape}")
    rows = np.random.default_rng(0).choice(
        len(embeddings), min(SAMPLE_QUERIES, len(embeddings)), replace=False
    )
    queries = embeddings[rows]
    _, found = index.search(queries, TOP)
    expected = -np.sort(-(queries @ embeddings.T), axis=1)[:, :TOP]
    # Scores, not ids: items with equal embeddings (unknown ids, same features) tie in any order.
    agreement = float(np.mean(np.isclose(found, expected, atol=1e-4)))
    # An IVF index is approximate by design: it must find most, not all, of the exact top items.
    least = 0.99 if index.kind == "flat" else MIN_IVF_AGREEMENT
    if agreement < least:
        raise IndexCheckError(f"index agrees with exact search on only {agreement:.1%} of top-{TOP} results")
    console.print(
        f"{index.kind} index of retriever v{version}: {len(index)} items x {index.dim}, "
        f"agreement {agreement:.3f}"
    )
    return IndexSummary(str(version), len(index), index.dim, rebuilt, agreement)
