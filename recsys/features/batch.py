"""The PySpark job that turns a dataset version into point-in-time feature snapshots.

Every statistic is a cumulative or windowed aggregate over per-(entity, snapshot bucket) partial sums, so
the whole history is computed in a handful of Spark stages instead of one job per snapshot. An event at
time t falls in bucket k = the first snapshot S_k with t < S_k, and snapshot S_k sums buckets 1..k: it
never counts an event at or after its own time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.features import schema
from recsys.features.schedule import snapshot_times
from recsys.vocab import EVENT_TYPES, GENRES, POSITIVE_EVENT_TYPES

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from recsys.config import FeaturesConfig

_DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "event_ts")
_REQUIRED_ITEM_COLUMNS = ("item_id", "categories", "published_at")


class FeatureInputError(ValueError):
    """Input tables that the feature job cannot turn into correct features."""


def spark_session(cfg: FeaturesConfig) -> SparkSession:
    """The active Spark session, or a new quiet local one configured for small batch jobs.

    Two shuffle partitions suit the data sizes of one machine; UTC keeps timestamps unambiguous.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if cfg.spark_master.startswith("local"):
        # A local job needs no network interface but loopback (and then Spark stops warning about it).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    spark = (
        SparkSession.builder.master(cfg.spark_master)
        .appName("recsys-features")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # On one machine adaptive re-planning of each stage costs more than it saves (measured ~1.5x).
        .config("spark.sql.adaptive.enabled", str(not cfg.spark_master.startswith("local")).lower())
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _require_columns(frame: DataFrame, required: tuple[str, ...], table: str) -> None:
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise FeatureInputError(f"{table} is missing columns {missing}")


def _days(later_us: Column, earlier_us: Column) -> Column:
    return ((later_us - earlier_us) / _DAY_US).cast("float")


def compute_features(
    spark: SparkSession, events: DataFrame, items: DataFrame, snapshot_every_days: int
) -> tuple[DataFrame, DataFrame]:
    """User and item feature snapshots (``user_features``, ``item_features`` of docs/architecture.md).

    Args:
        spark: The session that owns ``events`` and ``items``.
        events: ``interaction_events`` rows (at least user_id, item_id, event_type, event_ts).
        items: ``items`` rows (at least item_id, categories, published_at).
        snapshot_every_days: Cadence of the snapshots, counted from the first event.

    Returns:
        Lazy Spark frames with the columns of ``schema.user_features_schema()`` and
        ``schema.item_features_schema()``, one row per entity and snapshot after its first event.

    Raises:
        FeatureInputError: missing columns, no events, null keys or timestamps, unknown event types.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    _require_columns(events, _REQUIRED_EVENT_COLUMNS, "interaction_events")
    _require_columns(items, _REQUIRED_ITEM_COLUMNS, "items")

    ev = events.select("user_id", "item_id", "event_type", F.unix_micros(F.col("event_ts")).alias("ts"))
    stats = ev.agg(
        F.count(F.lit(1)).alias("n"),
        F.min("ts").alias("first"),
        F.max("ts").alias("last"),
        F.sum(F.when(F.col("user_id").isNull() | F.col("item_id").isNull(), 1).otherwise(0)).alias(
            "null_keys"
        ),
        F.sum(F.when(F.col("ts").isNull(), 1).otherwise(0)).alias("null_ts"),
        F.collect_set("event_type").alias("types"),
    ).first()
    assert stats is not None
    if stats["n"] == 0:
        raise FeatureInputError("interaction_events is empty: no features can be computed")
    if stats["null_keys"] or stats["null_ts"]:
        raise FeatureInputError(
            f"interaction_events has {stats['null_keys']} rows without user_id/item_id "
            f"and {stats['null_ts']} without event_ts"
        )
    unknown = sorted(set(stats["types"]) - set(EVENT_TYPES))
    if unknown:
        raise FeatureInputError(f"interaction_events has unknown event types {unknown}")

    first_us, last_us = int(stats["first"]), int(stats["last"])
    step_us = snapshot_every_days * _DAY_US
    times = snapshot_times(_from_micros(first_us), _from_micros(last_us), snapshot_every_days)
    n_snapshots = len(times)

    weights = F.create_map(*[F.lit(v) for kind, w in schema.EVENT_WEIGHTS.items() for v in (kind, w)])
    ev = ev.select(
        "user_id",
        "item_id",
        "ts",
        F.least(((F.col("ts") - F.lit(first_us)) / F.lit(step_us)).cast("long") + 1, F.lit(n_snapshots))
        .cast("int")
        .alias("k"),
        F.col("event_type").isin(*sorted(POSITIVE_EVENT_TYPES)).cast("long").alias("pos"),
        weights[F.col("event_type")].cast("double").alias("w"),
    )

    # Snapshot k sits at first + k * step, except the last, which sits just after the newest event. The
    # global positive rate up to each snapshot is the prior that item_positive_rate shrinks towards.
    final_us = _to_micros(times[-1])
    snaps = spark.range(1, n_snapshots + 1).select(
        F.col("id").cast("int").alias("k"),
        F.when(F.col("id") == n_snapshots, F.lit(final_us))
        .otherwise(F.lit(first_us) + F.col("id") * F.lit(step_us))
        .alias("s"),
    )
    everything = Window.orderBy("k").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    with_prior = snaps.join(
        ev.groupBy("k").agg(F.count(F.lit(1)).alias("n"), F.sum("pos").alias("npos")), "k", "left"
    ).select(
        "k",
        "s",
        (
            F.sum(F.coalesce("npos", F.lit(0))).over(everything)
            / F.sum(F.coalesce("n", F.lit(0))).over(everything)
        ).alias("prior"),
    )

    genre_cols = [f"g{i}" for i in range(len(GENRES))]
    item_genres = items.select(
        "item_id",
        F.unix_micros(F.col("published_at")).alias("published_us"),
        *[
            F.coalesce(F.array_contains(F.col("categories"), genre), F.lit(False)).cast("double").alias(col)
            for genre, col in zip(GENRES, genre_cols, strict=True)
        ],
    ).dropDuplicates(["item_id"])
    n_genres = sum((F.col(col) for col in genre_cols), F.lit(0.0))

    user_features = _user_features(ev, F.broadcast(item_genres), F.broadcast(snaps), genre_cols, n_genres)
    item_features = _item_features(ev, F.broadcast(item_genres), F.broadcast(with_prior), genre_cols)
    return user_features, item_features


def _grid(partials: DataFrame, key: str, snaps: DataFrame) -> DataFrame:
    """Every (entity, snapshot) from the entity's first bucket on, with that bucket's partial sums if any."""
    from pyspark.sql import functions as F

    first = partials.groupBy(key).agg(F.min("k").alias("k0"))
    grid = first.join(snaps, snaps["k"] >= first["k0"]).drop("k0")
    return grid.join(partials, [key, "k"], "left")


def _windowed_counts(ev: DataFrame, key: str, snaps: DataFrame, days: int, name: str) -> DataFrame:
    """Events in ``[S - days, S)`` per entity and snapshot: a range join, each event meets few snapshots."""
    from pyspark.sql import functions as F

    window_us = days * _DAY_US
    cond = (ev["ts"] < snaps["s"]) & (ev["ts"] >= snaps["s"] - F.lit(window_us))
    return (
        ev.select(key, "ts")
        .join(snaps.select("k", "s"), cond)
        .groupBy(key, "k")
        .agg(F.count(F.lit(1)).alias(name))
    )


def _user_features(
    ev: DataFrame, item_genres: DataFrame, snaps: DataFrame, genre_cols: list[str], n_genres: Column
) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    shares = ev.join(item_genres.select("item_id", *genre_cols, n_genres.alias("ng")), "item_id", "left")
    share = [
        F.when(F.col("ng") > 0, F.col("w") * F.col(col) / F.col("ng")).otherwise(0.0).alias(col)
        for col in genre_cols
    ]
    shares = shares.select("user_id", "k", "ts", "pos", *share)
    partials = shares.groupBy("user_id", "k").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("pos").alias("npos"),
        F.min("ts").alias("first_ts"),
        F.max("ts").alias("last_ts"),
        *[F.sum(col).alias(col) for col in genre_cols],
    )
    upto = (
        Window.partitionBy("user_id").orderBy("k").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    cumulative = _grid(partials, "user_id", snaps).select(
        "user_id",
        "k",
        "s",
        F.sum(F.coalesce("n", F.lit(0))).over(upto).alias("n"),
        F.sum(F.coalesce("npos", F.lit(0))).over(upto).alias("npos"),
        F.min("first_ts").over(upto).alias("first_ts"),
        F.max("last_ts").over(upto).alias("last_ts"),
        *[F.sum(F.coalesce(col, F.lit(0.0))).over(upto).alias(col) for col in genre_cols],
    )
    recent = _windowed_counts(ev, "user_id", snaps, schema.USER_WINDOW_DAYS, "n_recent")
    total = sum((F.col(col) for col in genre_cols), F.lit(0.0))
    affinity = F.array(
        *[F.when(total > 0, F.col(col) / total).otherwise(0.0).cast("float") for col in genre_cols]
    )
    feature_ts = F.timestamp_micros(F.col("s"))
    return cumulative.join(recent, ["user_id", "k"], "left").select(
        F.col("user_id"),
        feature_ts.alias(schema.FEATURE_TS),
        affinity.alias("user_genre_affinity"),
        F.col("n").cast("long").alias("user_n_events"),
        F.col("npos").cast("long").alias("user_n_positive"),
        F.coalesce(F.col("n_recent"), F.lit(0)).cast("long").alias("user_n_events_30d"),
        _days(F.col("s"), F.col("first_ts")).alias("user_days_since_first_event"),
        _days(F.col("s"), F.col("last_ts")).alias("user_days_since_last_event"),
        feature_ts.alias(schema.CREATED_TS),
    )


def _item_features(
    ev: DataFrame, item_genres: DataFrame, snaps: DataFrame, genre_cols: list[str]
) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    partials = ev.groupBy("item_id", "k").agg(F.count(F.lit(1)).alias("n"), F.sum("pos").alias("npos"))
    upto = (
        Window.partitionBy("item_id").orderBy("k").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    cumulative = _grid(partials, "item_id", snaps).select(
        "item_id",
        "k",
        "s",
        "prior",
        F.sum(F.coalesce("n", F.lit(0))).over(upto).alias("n"),
        F.sum(F.coalesce("npos", F.lit(0))).over(upto).alias("npos"),
    )
    recent = _windowed_counts(ev, "item_id", snaps, schema.ITEM_WINDOW_DAYS, "n_recent")
    m = schema.POSITIVE_RATE_PRIOR_EVENTS
    rate = (F.col("npos") + F.lit(m) * F.col("prior")) / (F.col("n") + F.lit(m))
    age = F.when(F.col("published_us").isNull(), F.lit(-1.0)).otherwise(
        F.greatest(F.lit(0.0), (F.col("s") - F.col("published_us")) / _DAY_US)
    )
    # Items missing from the catalogue get no genres rather than dropping their events.
    genre_vector = F.array(*[F.coalesce(F.col(col), F.lit(0.0)).cast("float") for col in genre_cols])
    feature_ts = F.timestamp_micros(F.col("s"))
    return (
        cumulative.join(recent, ["item_id", "k"], "left")
        .join(item_genres, "item_id", "left")
        .select(
            F.col("item_id"),
            feature_ts.alias(schema.FEATURE_TS),
            genre_vector.alias("item_genre_vector"),
            F.col("n").cast("long").alias("item_n_events"),
            F.col("npos").cast("long").alias("item_n_positive"),
            F.coalesce(F.col("n_recent"), F.lit(0)).cast("long").alias("item_n_events_365d"),
            rate.cast("float").alias("item_positive_rate"),
            age.cast("float").alias("item_age_days"),
            feature_ts.alias(schema.CREATED_TS),
        )
    )


def _from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _to_micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class OfflineTables:
    """Row counts of the written tables and the newest snapshot time (what the online store serves)."""

    user_rows: int
    item_rows: int
    final_snapshot: datetime


def write_offline(user_features: DataFrame, item_features: DataFrame, offline_dir: Path) -> OfflineTables:
    """Collect both tables and write them as single Parquet files in the exact contract layout.

    Single files, sorted by entity and time, make a recomputation byte-identical and are what Feast's
    offline store reads. Each file is written beside its target and renamed, so a reader never sees half.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    offline_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    for frame, target, layout, key in (
        (user_features, schema.USER_FEATURES_FILE, schema.user_features_schema(), "user_id"),
        (item_features, schema.ITEM_FEATURES_FILE, schema.item_features_schema(), "item_id"),
    ):
        table = frame.toArrow().select(layout.names).cast(layout)
        table = table.sort_by([(key, "ascending"), (schema.FEATURE_TS, "ascending")])
        partial = offline_dir / f".{target}.partial"
        pq.write_table(table, partial)
        os.replace(partial, offline_dir / target)
        tables.append(table)
    final = pc.max(tables[0][schema.FEATURE_TS]).as_py()
    return OfflineTables(user_rows=tables[0].num_rows, item_rows=tables[1].num_rows, final_snapshot=final)
