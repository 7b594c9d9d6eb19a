"""MovieLens CSVs to the three platform tables (interaction_events, items, users).

MovieLens has ratings, not interactions: a rating becomes one event whose type follows from the score
(``like_threshold`` and ``skip_below``), and sessions are cut where a user paused longer than
``session_gap_minutes``. docs/data.md documents the mapping.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.config import IngestConfig
from recsys.features.content import item_text
from recsys.ingest.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA

SOURCE_FILES: tuple[str, ...] = ("ratings.csv", "movies.csv", "tags.csv")
NO_GENRES = "(no genres listed)"
_YEAR = re.compile(r"\((\d{4})\)\s*$")


class SourceDataError(ValueError):
    """The source directory or one of its files is missing or unreadable."""


@dataclass(frozen=True)
class RawTables:
    """The three tables as mapped from the source, before the data contracts have run."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame


def read_source(data_dir: Path) -> dict[str, pd.DataFrame]:
    """Read ratings, movies and tags with ids as strings, so that ids never go through floats."""
    if not data_dir.is_dir():
        raise SourceDataError(f"MovieLens directory not found: {data_dir} (set ingest.data_dir)")
    dtypes: dict[str, dict[str, str]] = {
        "ratings.csv": {"userId": "string", "movieId": "string", "rating": "float64", "timestamp": "int64"},
        "movies.csv": {"movieId": "string", "title": "string", "genres": "string"},
        "tags.csv": {"userId": "string", "movieId": "string", "tag": "string", "timestamp": "int64"},
    }
    frames: dict[str, pd.DataFrame] = {}
    for name in SOURCE_FILES:
        path = data_dir / name
        if not path.is_file():
            raise SourceDataError(f"MovieLens file not found: {path}")
        try:
            frame = pd.read_csv(path, dtype=dtypes[name], keep_default_na=False, na_values=[""])
        except (ValueError, pd.errors.ParserError) as err:
            raise SourceDataError(f"cannot read {path}: {str(err).splitlines()[0]}") from err
        absent = sorted(set(dtypes[name]) - set(frame.columns))
        if absent:
            raise SourceDataError(f"{path} lacks columns {absent}")
        frames[name] = frame
    return frames


def sample_user_ids(user_ids: pd.Series, n: int | None, seed: int) -> set[str]:
    """A deterministic subset of ``n`` users: those with the smallest seeded hash of their id.

    The choice depends only on the ids and the seed, not on row order, so a sample is reproducible.

    >>> sorted(sample_user_ids(pd.Series(["1", "2", "3"]), 2, seed=0)) == sorted(
    ...     sample_user_ids(pd.Series(["3", "2", "1"]), 2, seed=0))
    True
    """
    unique = pd.unique(user_ids.astype(str))
    if n is None or n >= len(unique):
        return set(unique)
    keyed = sorted(unique, key=lambda uid: hashlib.sha1(f"{seed}:{uid}".encode()).hexdigest())
    return set(keyed[:n])


def event_ids(user_id: pd.Series, item_id: pd.Series, ts_ms: pd.Series, event_type: pd.Series) -> list[str]:
    """First 16 hex of sha1(``user_id|item_id|event_ts_ms|event_type``): stable across re-ingests."""
    keys = user_id + "|" + item_id + "|" + ts_ms.astype(str) + "|" + event_type
    return [hashlib.sha1(key.encode()).hexdigest()[:16] for key in keys]


def session_numbers(user_id: pd.Series, ts: pd.Series, gap_minutes: int) -> np.ndarray:
    """1-based session number per event; rows must be sorted by (user_id, ts).

    A session ends when the user is inactive for more than ``gap_minutes``.
    """
    gap = ts.diff() > pd.Timedelta(minutes=gap_minutes)
    new_user = user_id.ne(user_id.shift())
    starts = (gap | new_user).astype("int64")
    return np.asarray(starts.groupby(user_id.to_numpy()).cumsum(), dtype=np.int64)


def map_ratings(ratings: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    """Ratings to ``interaction_events`` rows (columns and order of ``EVENTS_SCHEMA``)."""
    if cfg.skip_below > cfg.like_threshold:
        raise SourceDataError(
            f"ingest.skip_below ({cfg.skip_below}) must not exceed "
            f"ingest.like_threshold ({cfg.like_threshold})"
        )
    # Missing ids stay missing (None) so that the contracts quarantine those rows; "" only keys them here.
    frame = ratings.assign(
        user_id=ratings["userId"].astype(object).where(ratings["userId"].notna(), None),
        item_id=ratings["movieId"].astype(object).where(ratings["movieId"].notna(), None),
        user_key=ratings["userId"].fillna("").astype(str),
        item_key=ratings["movieId"].fillna("").astype(str),
    )
    frame = frame.sort_values(["user_key", "timestamp", "item_key"], kind="stable").reset_index(drop=True)
    rating = frame["rating"]
    event_type = np.where(
        rating >= cfg.like_threshold, "like", np.where(rating < cfg.skip_below, "skip", "view")
    )
    event_type_s = pd.Series(event_type, index=frame.index, dtype=object).where(rating.notna(), None)
    ts = pd.to_datetime(frame["timestamp"], unit="s", utc=True).astype("datetime64[us, UTC]")
    sessions = session_numbers(frame["user_key"], ts, cfg.session_gap_minutes)
    n = len(frame)
    events = pd.DataFrame(
        {
            "event_id": event_ids(
                frame["user_key"], frame["item_key"], frame["timestamp"] * 1000, event_type_s.fillna("")
            ),
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "event_type": event_type_s,
            "dwell_time_ms": pd.array([None] * n, dtype="Int64"),
            "surface": pd.Series([None] * n, dtype=object),
            "session_id": (frame["user_key"] + "-" + pd.Series(sessions).astype(str)).astype(object),
            "device_type": pd.Series([None] * n, dtype=object),
            "position": pd.array([None] * n, dtype="Int32"),
            "request_id": pd.Series([None] * n, dtype=object),
            "event_ts": ts,
            "server_ts": ts,
        }
    )
    return events[EVENTS_SCHEMA.names]


def map_movies(movies: pd.DataFrame, tags: pd.DataFrame) -> pd.DataFrame:
    """Movies and their tags to ``items`` rows (columns and order of ``ITEMS_SCHEMA``)."""
    tag_frame = tags.dropna(subset=["tag"]).assign(tag=lambda t: t["tag"].str.strip())
    tag_frame = tag_frame[tag_frame["tag"] != ""].sort_values(["movieId", "timestamp", "tag"], kind="stable")
    # One mention per distinct tag (case-insensitive), in order of first use.
    tag_frame = tag_frame.assign(key=tag_frame["tag"].str.lower()).drop_duplicates(["movieId", "key"])
    tags_by_item: dict[str, list[str]] = {
        str(mid): [str(t) for t in group] for mid, group in tag_frame.groupby("movieId", sort=False)["tag"]
    }
    rows = []
    for movie_id, title, genres in movies[["movieId", "title", "genres"]].itertuples(index=False):
        title_s = None if pd.isna(title) else str(title).strip()
        genre_s = "" if pd.isna(genres) else str(genres)
        categories = [] if genre_s in ("", NO_GENRES) else genre_s.split("|")
        year = _YEAR.search(title_s) if title_s else None
        item_id = None if pd.isna(movie_id) else str(movie_id)
        rows.append(
            {
                "item_id": item_id,
                "title": title_s,
                "text": item_text(title_s or "", categories, tags_by_item.get(item_id or "", [])),
                "categories": categories,
                "duration_s": None,
                "published_at": pd.Timestamp(int(year.group(1)), 1, 1, tz="UTC") if year else pd.NaT,
            }
        )
    items = pd.DataFrame(rows, columns=ITEMS_SCHEMA.names)
    items["duration_s"] = items["duration_s"].astype("float64")
    items["published_at"] = pd.to_datetime(items["published_at"], utc=True).astype("datetime64[us, UTC]")
    return items


def derive_users(events: pd.DataFrame) -> pd.DataFrame:
    """One ``users`` row per user with an event; signup is the first event (MovieLens has no signup)."""
    first = events.groupby("user_id", sort=True)["event_ts"].min()
    users = pd.DataFrame(
        {"user_id": first.index.astype(object), "signup_ts": first.to_numpy(), "region": None}, columns=None
    )
    users["region"] = users["region"].astype(object)
    users["signup_ts"] = pd.to_datetime(users["signup_ts"], utc=True).astype("datetime64[us, UTC]")
    return users[USERS_SCHEMA.names]


def read_movielens(cfg: IngestConfig) -> RawTables:
    """Read ``cfg.data_dir`` and map it to the three tables, keeping only the sampled users' events.

    Every item is kept, whether or not a sampled user touched it, so the catalogue does not depend on
    the sample.
    """
    source = read_source(Path(cfg.data_dir))
    ratings = source["ratings.csv"]
    keep = sample_user_ids(ratings["userId"].dropna(), cfg.sample_users, cfg.seed)
    ratings = ratings[ratings["userId"].isin(keep)]
    events = map_ratings(ratings, cfg)
    items = map_movies(source["movies.csv"], source["tags.csv"])
    return RawTables(events=events, items=items, users=derive_users(events))
