"""Item content embeddings: the packaged encoder, its cache, ingest, and Feast's offline == online values."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from factories import write_movielens_dir

from recsys.config import FeaturesConfig, IngestConfig, PipelineConfig
from recsys.features.content import (
    CONTENT_FEATURE,
    CONTENT_FILE,
    EMBEDDING_DIM,
    ContentEncoder,
    EmbeddingCache,
    embed_texts,
    ensure_item_content,
    publish_offline,
    read_content,
    texts_of,
)
from recsys.ingest.stage import run_ingest
from recsys.state import StateDir

T0 = 1_000_000_000  # 2001-09-09T01:46:40Z
MOVIES = [
    (10, "Alien (1979)", "Horror|Sci-Fi"),
    (20, "Notting Hill (1999)", "Comedy|Romance"),
    (30, "Untitled", "(no genres listed)"),
]
RATINGS = [(1, 10, 4.0, T0), (1, 20, 3.0, T0 + 60), (2, 30, 5.0, T0 + 5), (2, 10, 2.0, T0 + 9)]
TAGS = [(1, 10, "spaceship", T0)]


@pytest.fixture(scope="session")
def encoder() -> ContentEncoder:
    """One encoder for the run; the packaged model behind it is loaded once per process."""
    return ContentEncoder()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_packaged_encoder_gives_unit_384d_vectors_that_mean_something(encoder: ContentEncoder) -> None:
    texts = ["space alien invasion sci-fi", "extraterrestrial science fiction", "romantic comedy wedding"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, EMBEDDING_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.2
    assert _cosine(vectors[1], vectors[0]) > _cosine(vectors[1], vectors[2])
    # The same text gives the same vector, whatever it is batched with.
    np.testing.assert_allclose(encoder.encode(texts[:1])[0], vectors[0], atol=1e-5)


def test_the_cache_never_encodes_a_text_twice(encoder: ContentEncoder, tmp_path: Path) -> None:
    texts = [
        "Heat (1995). Genres: Action.",
        "Toy Story (1995). Genres: Animation.",
        "Heat (1995). Genres: Action.",
    ]
    before = encoder.encoded
    first = embed_texts(texts, encoder, EmbeddingCache(tmp_path))
    assert encoder.encoded - before == 2  # the repeated text went through the model once
    np.testing.assert_array_equal(first[0], first[2])
    # A new cache object over the same folder (a later run) answers everything from disk.
    again = embed_texts(texts, encoder, EmbeddingCache(tmp_path))
    assert encoder.encoded - before == 2
    np.testing.assert_array_equal(again, first)
    # Only the unseen text is encoded.
    more = embed_texts([*texts, "Alien (1979). Genres: Sci-Fi."], encoder, EmbeddingCache(tmp_path))
    assert encoder.encoded - before == 3
    np.testing.assert_array_equal(more[:3], first)
    assert len(EmbeddingCache(tmp_path)) == 3


def test_items_without_text_are_described_by_title_and_genres() -> None:
    items = pd.DataFrame({"item_id": ["a"], "title": ["Heat (1995)"], "categories": [["Action", "Crime"]]})
    assert texts_of(items) == ["Heat (1995). Genres: Action, Crime."]


def test_ingest_embeds_only_new_items_and_a_new_item_gets_its_vector(
    encoder: ContentEncoder, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    features = FeaturesConfig(content_embeddings=True)
    first_dir = write_movielens_dir(tmp_path / "ml1", RATINGS, MOVIES, TAGS)
    first = run_ingest(
        PipelineConfig(state_dir=state_dir, ingest=IngestConfig(data_dir=first_dir), features=features)
    )
    assert first.content is not None and (first.content.n_items, first.content.n_encoded) == (3, 3)
    ids, vectors = read_content(first.path / CONTENT_FILE)
    assert sorted(ids) == ["10", "20", "30"] and vectors.shape == (3, EMBEDDING_DIM)
    # Later the catalogue gains a film (and someone rates it): only that film is encoded.
    later_dir = write_movielens_dir(
        tmp_path / "ml2",
        [*RATINGS, (2, 40, 4.0, T0 + 99)],
        [*MOVIES, (40, "Wedding Crashers (2005)", "Comedy")],
        TAGS,
    )
    later = run_ingest(
        PipelineConfig(state_dir=state_dir, ingest=IngestConfig(data_dir=later_dir), features=features)
    )
    assert later.dataset_version != first.dataset_version
    assert later.content is not None and (later.content.n_items, later.content.n_encoded) == (4, 1)
    new_ids, new_vectors = read_content(later.path / CONTENT_FILE)
    by_id = dict(zip(new_ids, new_vectors, strict=True))
    for item_id, vector in zip(ids, vectors, strict=True):
        np.testing.assert_array_equal(by_id[item_id], vector)
    wedding = encoder.encode(["Wedding Crashers (2005). Genres: Comedy."])[0]
    np.testing.assert_allclose(by_id["40"], wedding, atol=1e-5)
    # The Sci-Fi film sits nearer the alien query than the wedding comedy does.
    query = encoder.encode(["aliens attack a spaceship"])[0]
    assert float(by_id["10"] @ query) > float(by_id["40"] @ query)
    table = pq.read_table(later.path / CONTENT_FILE).to_pandas().set_index("item_id")
    assert table.loc["10", "feature_ts"] == pd.Timestamp("1979-01-01", tz="UTC")
    assert table.loc["30", "feature_ts"] == pd.Timestamp("1970-01-01", tz="UTC")  # no year in the title
    # Asked again (a re-run of ingest, or the features stage), the version's table is kept as it is.
    again = ensure_item_content(later.path, EmbeddingCache(state_dir / "content_cache"), encoder)
    assert (again.written, again.n_encoded, again.n_items) == (False, 0, 4)


@pytest.mark.integration
def test_offline_and_online_content_vectors_are_equal(encoder: ContentEncoder, tmp_path: Path) -> None:
    from recsys.features.store import (
        apply_definitions,
        build_store,
        historical_features,
        online_features,
    )

    state = StateDir(tmp_path / "state")
    dataset = state.dataset("v1")
    dataset.mkdir(parents=True)
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "title": ["Alien (1979)", "Notting Hill (1999)", "Old Film (1902)"],
            "text": ["Alien (1979). Genres: Sci-Fi.", "Notting Hill (1999). Genres: Romance.", "Old Film."],
            "categories": [["Sci-Fi"], ["Romance"], []],
            "published_at": pd.to_datetime(["1979-01-01", "1999-01-01", "1902-01-01"], utc=True),
        }
    )
    items.to_parquet(dataset / "items.parquet")
    published = publish_offline(dataset, state.offline, EmbeddingCache(state.content_cache), enabled=True)
    assert published.n_items == 3 and published.newest == datetime(1999, 1, 1, tzinfo=UTC)
    cfg = FeaturesConfig(online_store="sqlite")
    store = build_store(state, cfg)
    apply_definitions(store)
    store.materialize(
        start_date=datetime(1970, 1, 1, tzinfo=UTC), end_date=published.newest, feature_views=["item_content"]
    )
    ids, offline = read_content(state.offline / CONTENT_FILE)
    online = online_features(store, "item_content_v1", [{"item_id": item_id} for item_id in ids])
    assert list(online["item_id"]) == ids
    for row, vector in zip(online[CONTENT_FEATURE], offline, strict=True):
        np.testing.assert_array_equal(np.asarray(row, dtype=np.float32), vector)
    assert online_features(store, "item_content_v1", [{"item_id": "nope"}])[CONTENT_FEATURE].isna().all()
    # Point in time: an event before the film was published gets no content; one after gets the vector.
    entity_df = pd.DataFrame(
        {
            "item_id": ["b", "b"],
            "event_timestamp": pd.to_datetime(["1998-06-01", "2001-06-01"], utc=True),
        }
    )
    joined = historical_features(store, entity_df, "item_content_v1")
    assert joined[CONTENT_FEATURE].iloc[0] is None or np.all(pd.isna(joined[CONTENT_FEATURE].iloc[0]))
    np.testing.assert_array_equal(np.asarray(joined[CONTENT_FEATURE].iloc[1], np.float32), offline[1])
