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
from recsys.features.coview import coview_table
from recsys.features.schedule import snapshot_times
from recsys.vocab import DEVICE_TYPES, EVENT_TYPES, GENRES, POSITIVE_EVENT_TYPES

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import Column, DataFrame, SparkSession

    from recsys.config import FeaturesConfig

_DAY_US = 86_400_000_000
_HOUR_US = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "event_ts")
_REQUIRED_ITEM_COLUMNS = ("item_id", "categories", "published_at")
_REQUIRED_USER_COLUMNS = ("user_id", "signup_ts")


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
        # Only takes effect when this call starts the JVM, which is when a local session is created here.
        .config("spark.driver.memory", cfg.spark_driver_memory)
        .config("spark.driver.maxResultSize", cfg.spark_driver_memory)
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


@dataclass(frozen=True)
class FeatureFrames:
    """The job's lazy output: one frame per offline table (layouts in ``recsys.features.schema``)."""

    user: DataFrame  # user_features_schema(): user_stats, user_activity and user_cross columns
    item: DataFrame  # item_features_schema(): item_stats and item_activity columns
    coview: DataFrame  # coview_schema()
    # The events joined to the catalogue, which all three read, cached on their first use: without it
    # each table's plan rescans and rejoins them (a small run's features took ~25% longer).
    events: DataFrame | None = None

    def release(self) -> None:
        """Drop the cached events once the tables are written (a no-op when nothing was cached)."""
        if self.events is not None:
            self.events.unpersist()


def _optional(frame: DataFrame, name: str, spark_type: str) -> Column:
    """A column that older or poorer logs may lack (MovieLens has no dwell or device): null when absent."""
    from pyspark.sql import functions as F

    return F.col(name).cast(spark_type) if name in frame.columns else F.lit(None).cast(spark_type)


def compute_features(
    spark: SparkSession,
    events: DataFrame,
    items: DataFrame,
    snapshot_every_days: int,
    users: DataFrame | None = None,
) -> FeatureFrames:
    """User, item and co-view feature snapshots (``user_features``, ``item_features``, ``item_coview``).

    Args:
        spark: The session that owns ``events`` and ``items``.
        events: ``interaction_events`` rows (at least user_id, item_id, event_type, event_ts; session_id,
            device_type and dwell_time_ms feed the session, device and completion features, which are
            null or ``unknown`` without them).
        items: ``items`` rows (at least item_id, categories, published_at; duration_s when known).
        snapshot_every_days: Cadence of the snapshots, counted from the first event.
        users: ``users`` rows (user_id, signup_ts) for the account age; None leaves it null.

    Returns:
        Lazy Spark frames: one row per user and per item and snapshot after its first event; co-view rows
        only where an item's neighbours changed.

    Raises:
        FeatureInputError: missing columns, no events, null keys or timestamps, unknown event types, a
            history longer than ``schema.MAX_HALF_LIVES`` recency half-lives.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    _require_columns(events, _REQUIRED_EVENT_COLUMNS, "interaction_events")
    _require_columns(items, _REQUIRED_ITEM_COLUMNS, "items")
    if users is not None:
        _require_columns(users, _REQUIRED_USER_COLUMNS, "users")

    ev = events.select(
        "user_id",
        "item_id",
        "event_type",
        F.unix_micros(F.col("event_ts")).alias("ts"),
        _optional(events, "session_id", "string").alias("session_id"),
        _optional(events, "device_type", "string").alias("device"),
        _optional(events, "dwell_time_ms", "double").alias("dwell_ms"),
    )
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
    half_life_us = schema.RECENCY_HALF_LIFE_DAYS * _DAY_US
    if (last_us - first_us) / half_life_us > schema.MAX_HALF_LIVES:
        raise FeatureInputError(
            f"interaction_events spans more than {schema.MAX_HALF_LIVES:.0f} recency half-lives "
            f"({schema.RECENCY_HALF_LIFE_DAYS} days): recency weights would overflow"
        )
    step_us = snapshot_every_days * _DAY_US
    times = snapshot_times(_from_micros(first_us), _from_micros(last_us), snapshot_every_days)
    n_snapshots = len(times)

    def bucket(ts: Column) -> Column:
        return F.least(((ts - F.lit(first_us)) / F.lit(step_us)).cast("long") + 1, F.lit(n_snapshots)).cast(
            "int"
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

    genre_cols = [f"g{i}" for i in range(len(GENRES))]
    item_info = items.select(
        "item_id",
        F.unix_micros(F.col("published_at")).alias("published_us"),
        _optional(items, "duration_s", "double").alias("duration_s"),
        *[
            F.coalesce(F.array_contains(F.col("categories"), genre), F.lit(False)).cast("double").alias(col)
            for genre, col in zip(GENRES, genre_cols, strict=True)
        ],
    ).dropDuplicates(["item_id"])
    n_genres = sum((F.col(col) for col in genre_cols), F.lit(0.0))

    # Events meet the catalogue once; every table below reads this frame. Events of items missing from the
    # catalogue keep null genres and duration rather than being dropped.
    weights = F.create_map(*[F.lit(v) for kind, w in schema.EVENT_WEIGHTS.items() for v in (kind, w)])
    is_view = F.col("event_type") == "view"
    watched = F.col("dwell_ms") / (F.col("duration_s") * 1000.0)
    fraction = F.when(
        is_view & F.col("dwell_ms").isNotNull() & (F.col("duration_s") > 0),
        F.least(F.lit(1.0), F.greatest(F.lit(0.0), watched)),
    )
    pos = F.col("event_type").isin(*sorted(POSITIVE_EVENT_TYPES))
    ev = ev.join(
        F.broadcast(item_info.select("item_id", "duration_s", *genre_cols, n_genres.alias("ng"))),
        "item_id",
        "left",
    ).select(
        "user_id",
        "item_id",
        "event_type",
        "ts",
        bucket(F.col("ts")).alias("k"),
        pos.cast("long").alias("pos"),
        weights[F.col("event_type")].cast("double").alias("w"),
        "session_id",
        "device",
        fraction.alias("fraction"),
        F.when(is_view, schema.WATCH_WEIGHT * F.coalesce(fraction, F.lit(schema.DEFAULT_WATCH_FRACTION)))
        .when(pos, 1.0)
        .otherwise(0.0)
        .alias("aw"),
        # 2^((t - first) / half-life): normalised affinities only need weights relative to each other.
        F.pow(F.lit(2.0), (F.col("ts") - F.lit(first_us)) / F.lit(half_life_us)).alias("decay"),
        *genre_cols,
        "ng",
    )
    ev = ev.cache()  # every table below reads it (FeatureFrames.events)

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
    signups = None
    if users is not None:
        signups = users.groupBy("user_id").agg(F.min(F.unix_micros(F.col("signup_ts"))).alias("signup_us"))
    return FeatureFrames(
        user=_user_features(ev, F.broadcast(snaps), genre_cols, bucket, signups),
        item=_item_features(ev, F.broadcast(item_info), F.broadcast(with_prior), genre_cols),
        coview=coview_table(ev, F.broadcast(snaps), n_snapshots),
        events=ev,
    )


def _grid(partials: DataFrame, key: str, snaps: DataFrame) -> DataFrame:
    """Every (entity, snapshot) from the entity's first bucket on, with that bucket's partial sums if any."""
    from pyspark.sql import functions as F

    first = partials.groupBy(key).agg(F.min("k").alias("k0"))
    grid = first.join(snaps, snaps["k"] >= first["k0"]).drop("k0")
    return grid.join(partials, [key, "k"], "left")


def _in_window(ev: DataFrame, snaps: DataFrame, days: int) -> DataFrame:
    """Events in ``[S - days, S)`` paired with each snapshot S: a range join, each event meets few snapshots.

    The event's own bucket column is dropped; ``k`` and ``s`` are the snapshot's.
    """
    from pyspark.sql import functions as F

    window_us = days * _DAY_US
    cond = (ev["ts"] < snaps["s"]) & (ev["ts"] >= snaps["s"] - F.lit(window_us))
    return ev.drop("k").join(snaps.select("k", "s"), cond)


def _newest_per_snapshot(rows: DataFrame, key: str, order: str, value: str, n: int, name: str) -> DataFrame:
    """``(key, k, name)``: the ``value``s of the ``n`` rows with the largest ``order`` in buckets <= k,
    newest first, for each bucket k that holds a row (later buckets repeat it: fill forward).

    Within a bucket the newest n rows are kept; the previous n - 1 non-empty buckets are enough to find the
    newest n rows overall, so the window never grows with the history.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest = F.reverse(
        F.array_sort(F.collect_list(F.struct(F.col(order).alias("o"), F.col(value).alias("v"))))
    )
    per_bucket = rows.groupBy(key, "k").agg(F.slice(newest, 1, n).alias("b"))
    back = Window.partitionBy(key).orderBy("k").rowsBetween(-(n - 1), Window.currentRow)
    buckets = F.reverse(F.array_sort(F.collect_list(F.struct("k", "b")).over(back)))
    values = F.flatten(F.transform(buckets, lambda bucket: F.transform(bucket["b"], lambda row: row["v"])))
    return per_bucket.select(key, "k", values.alias(name))


def _affinity(sums: list[Column]) -> Column:
    """Shares of a list of non-negative sums as float32, all zero when nothing weighs."""
    from pyspark.sql import functions as F

    total = sum(sums, F.lit(0.0))
    return F.array(*[F.when(total > 0, col / total).otherwise(0.0).cast("float") for col in sums])


def _preferred_device(devices: Column) -> Column:
    """The most frequent of ``recsys.vocab.DEVICE_TYPES`` in an array ordered newest first; a tie goes to
    the device used most recently, none to ``schema.UNKNOWN_DEVICE``."""
    from pyspark.sql import functions as F

    def same(device: str) -> Callable[[Column], Column]:
        return lambda d: d == F.lit(device)

    candidates = [
        F.struct(
            F.size(F.filter(devices, same(device))).alias("count"),
            # array_position is 1-based and 0 when absent; absent devices lose on count anyway.
            (-F.array_position(devices, device)).alias("recency"),
            F.lit(device).alias("device"),
        )
        for device in DEVICE_TYPES
    ]
    best = F.greatest(*candidates)
    return F.when(best["count"] > 0, best["device"]).otherwise(F.lit(schema.UNKNOWN_DEVICE))


def _user_features(
    ev: DataFrame,
    snaps: DataFrame,
    genre_cols: list[str],
    bucket: Callable[[Column], Column],
    signups: DataFrame | None,
) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def share(weight: Column, col: str) -> Column:
        # An event's weight spread evenly over its item's genres.
        return F.when(F.col("ng") > 0, weight * F.col(col) / F.col("ng")).otherwise(0.0)

    def in_genre(col: str) -> Column:
        return F.coalesce(F.col(col), F.lit(0.0))

    n_g = len(genre_cols)
    partials = ev.groupBy("user_id", "k").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("pos").alias("npos"),
        F.min("ts").alias("first_ts"),
        F.max("ts").alias("last_ts"),
        *[F.sum(share(F.col("w"), col)).alias(col) for col in genre_cols],
        *[F.sum(share(F.col("aw") * F.col("decay"), col)).alias(f"r{i}") for i, col in enumerate(genre_cols)],
        *[F.sum(in_genre(col)).alias(f"ce{i}") for i, col in enumerate(genre_cols)],
        *[F.sum(in_genre(col) * F.col("pos")).alias(f"cp{i}") for i, col in enumerate(genre_cols)],
    )
    recent = _newest_per_snapshot(
        ev.where(F.col("w") > 0).groupBy("user_id", "k", "item_id").agg(F.max("ts").alias("ts")),
        "user_id",
        "ts",
        "item_id",
        schema.RECENT_ITEMS,
        "recent_items",
    )
    # A session's device is that of its first event that reports a known one, so it is known from then on.
    sessions = (
        ev.where(F.col("session_id").isNotNull() & F.col("device").isin(*DEVICE_TYPES))
        .groupBy("user_id", "session_id")
        .agg(F.min(F.struct("ts", "device")).alias("start"))
        .select("user_id", bucket(F.col("start.ts")).alias("k"), "start.ts", "start.device")
    )
    devices = _newest_per_snapshot(sessions, "user_id", "ts", "device", schema.DEVICE_SESSIONS, "devices")

    upto = (
        Window.partitionBy("user_id").orderBy("k").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    sums = [*genre_cols, *[f"{p}{i}" for p in ("r", "ce", "cp") for i in range(n_g)]]
    grid = (
        _grid(partials, "user_id", snaps)
        .join(recent, ["user_id", "k"], "left")
        .join(devices, ["user_id", "k"], "left")
    )
    cumulative = grid.select(
        "user_id",
        "k",
        "s",
        F.sum(F.coalesce("n", F.lit(0))).over(upto).alias("n"),
        F.sum(F.coalesce("npos", F.lit(0))).over(upto).alias("npos"),
        F.min("first_ts").over(upto).alias("first_ts"),
        F.max("last_ts").over(upto).alias("last_ts"),
        *[F.sum(F.coalesce(col, F.lit(0.0))).over(upto).alias(col) for col in sums],
        F.last("recent_items", ignorenulls=True).over(upto).alias("recent_items"),
        F.last("devices", ignorenulls=True).over(upto).alias("devices"),
    )

    # One range join serves both windows: the 7-day figures come from the 30-day rows of the last 7 days.
    week_start = F.col("s") - F.lit(schema.SHORT_WINDOW_DAYS * _DAY_US)
    in_week = F.col("ts") >= week_start
    week_ts = F.when(in_week, F.col("ts"))
    per_session = (
        _in_window(
            ev.select("user_id", "ts", "session_id", "aw", "ng", *genre_cols),
            snaps,
            schema.AFFINITY_WINDOW_DAYS,
        )
        .groupBy("user_id", "k", "session_id")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(in_week.cast("long")).alias("n_week"),
            ((F.max(week_ts) - F.min(week_ts)) / 60e6).alias("minutes"),
            F.collect_set(F.floor(F.col("ts") / _DAY_US)).alias("days"),
            *[F.sum(share(F.col("aw"), col)).alias(f"a{i}") for i, col in enumerate(genre_cols)],
        )
    )
    session_in_week = (F.col("n_week") > 0) & F.col("session_id").isNotNull()
    recent_activity = per_session.groupBy("user_id", "k").agg(
        F.sum("n").alias("n_30d"),
        F.count("session_id").alias("sessions_30d"),
        F.size(F.array_distinct(F.flatten(F.collect_list("days")))).alias("days_30d"),
        F.sum("n_week").alias("n_7d"),
        F.count(F.when(session_in_week, 1)).alias("sessions_7d"),
        F.avg(F.when(session_in_week, F.col("minutes"))).alias("session_minutes_7d"),
        *[F.sum(f"a{i}").alias(f"a{i}") for i in range(n_g)],
    )
    rows = cumulative.join(recent_activity, ["user_id", "k"], "left")
    account_age: Column = F.lit(None).cast("float")
    if signups is not None:
        rows = rows.join(F.broadcast(signups), "user_id", "left")
        # A signup after the snapshot (a clock error) counts as a brand-new account.
        account_age = F.when(
            F.col("signup_us").isNotNull(), F.greatest(F.lit(0.0), _days(F.col("s"), F.col("signup_us")))
        )

    rate = F.col("npos") / F.col("n")
    m = schema.CATEGORY_PRIOR_EVENTS
    category = F.array(
        *[((F.col(f"cp{i}") + m * rate) / (F.col(f"ce{i}") + m)).cast("float") for i in range(n_g)]
    )
    feature_ts = F.timestamp_micros(F.col("s"))

    def count(col: str) -> Column:
        return F.coalesce(F.col(col), F.lit(0)).cast("long")

    return rows.select(
        F.col("user_id"),
        feature_ts.alias(schema.FEATURE_TS),
        _affinity([F.col(col) for col in genre_cols]).alias("user_genre_affinity"),
        F.col("n").cast("long").alias("user_n_events"),
        F.col("npos").cast("long").alias("user_n_positive"),
        count("n_30d").alias("user_n_events_30d"),
        _days(F.col("s"), F.col("first_ts")).alias("user_days_since_first_event"),
        _days(F.col("s"), F.col("last_ts")).alias("user_days_since_last_event"),
        _affinity([F.coalesce(F.col(f"a{i}"), F.lit(0.0)) for i in range(n_g)]).alias(
            "user_genre_affinity_30d"
        ),
        account_age.cast("float").alias("user_account_age_days"),
        F.col("session_minutes_7d").cast("float").alias("user_avg_session_minutes_7d"),
        _preferred_device(F.coalesce(F.col("devices"), F.array().cast("array<string>"))).alias(
            "user_preferred_device"
        ),
        count("n_7d").alias("user_n_events_7d"),
        count("sessions_7d").alias("user_n_sessions_7d"),
        count("sessions_30d").alias("user_n_sessions_30d"),
        count("days_30d").alias("user_n_active_days_30d"),
        category.alias("user_category_affinity"),
        _affinity([F.col(f"r{i}") for i in range(n_g)]).alias("user_recency_affinity"),
        F.coalesce(
            F.slice(F.array_distinct(F.col("recent_items")), 1, schema.RECENT_ITEMS),
            F.array().cast("array<string>"),
        ).alias("user_recent_items"),
        feature_ts.alias(schema.CREATED_TS),
    )


def _item_features(ev: DataFrame, item_info: DataFrame, snaps: DataFrame, genre_cols: list[str]) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    partials = ev.groupBy("item_id", "k").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("pos").alias("npos"),
        F.sum("fraction").alias("fraction_sum"),
        F.count("fraction").alias("fraction_n"),
    )
    upto = (
        Window.partitionBy("item_id").orderBy("k").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    cumulative = _grid(partials, "item_id", snaps).select(
        "item_id",
        "k",
        "s",
        "prior",
        *[
            F.sum(F.coalesce(col, F.lit(0))).over(upto).alias(col)
            for col in ("n", "npos", "fraction_sum", "fraction_n")
        ],
    )
    # One range join for both windows: 7-day popularity counts the year's rows of the last 7 days.
    engaged_this_week = (F.col("w") > 0) & (
        F.col("ts") >= F.col("s") - F.lit(schema.SHORT_WINDOW_DAYS * _DAY_US)
    )
    recent = (
        _in_window(ev.select("item_id", "user_id", "ts", "w", "k"), snaps, schema.ITEM_WINDOW_DAYS)
        .groupBy("item_id", "k")
        .agg(
            F.count(F.lit(1)).alias("n_recent"),
            F.countDistinct(F.when(engaged_this_week, F.col("user_id"))).alias("users_7d"),
        )
    )
    m = schema.POSITIVE_RATE_PRIOR_EVENTS
    rate = (F.col("npos") + F.lit(m) * F.col("prior")) / (F.col("n") + F.lit(m))
    age_us = F.col("s") - F.col("published_us")
    age = F.when(F.col("published_us").isNull(), F.lit(-1.0)).otherwise(
        F.greatest(F.lit(0.0), age_us / _DAY_US)
    )
    # Items missing from the catalogue get no genres rather than dropping their events.
    genre_vector = F.array(*[F.coalesce(F.col(col), F.lit(0.0)).cast("float") for col in genre_cols])
    feature_ts = F.timestamp_micros(F.col("s"))
    return (
        cumulative.join(recent, ["item_id", "k"], "left")
        .join(item_info, "item_id", "left")
        .select(
            F.col("item_id"),
            feature_ts.alias(schema.FEATURE_TS),
            genre_vector.alias("item_genre_vector"),
            F.col("n").cast("long").alias("item_n_events"),
            F.col("npos").cast("long").alias("item_n_positive"),
            F.coalesce(F.col("n_recent"), F.lit(0)).cast("long").alias("item_n_events_365d"),
            rate.cast("float").alias("item_positive_rate"),
            age.cast("float").alias("item_age_days"),
            F.coalesce(F.col("users_7d"), F.lit(0)).cast("long").alias("item_popularity_7d"),
            # Unknown publication: null here (NaN to the ranker), where item_age_days says -1.
            F.when(F.col("published_us").isNotNull(), F.greatest(F.lit(0.0), age_us / _HOUR_US))
            .cast("float")
            .alias("item_age_hours"),
            F.when(F.col("fraction_n") > 0, F.col("fraction_sum") / F.col("fraction_n"))
            .cast("float")
            .alias("item_avg_completion"),
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
    coview_rows: int
    final_snapshot: datetime


def write_offline(frames: FeatureFrames, offline_dir: Path) -> OfflineTables:
    """Collect the tables and write them as single Parquet files in the exact contract layout.

    Single files, sorted by entity and time, make a recomputation byte-identical and are what Feast's
    offline store reads. Each file is written beside its target and renamed, so a reader never sees half.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    offline_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    for frame, target, layout, key in (
        (frames.user, schema.USER_FEATURES_FILE, schema.user_features_schema(), "user_id"),
        (frames.item, schema.ITEM_FEATURES_FILE, schema.item_features_schema(), "item_id"),
        (frames.coview, schema.COVIEW_FILE, schema.coview_schema(), "item_id"),
    ):
        table = frame.toArrow().select(layout.names).cast(layout)
        table = table.sort_by([(key, "ascending"), (schema.FEATURE_TS, "ascending")])
        partial = offline_dir / f".{target}.partial"
        pq.write_table(table, partial)
        os.replace(partial, offline_dir / target)
        tables.append(table)
    final = pc.max(tables[0][schema.FEATURE_TS]).as_py()
    return OfflineTables(
        user_rows=tables[0].num_rows,
        item_rows=tables[1].num_rows,
        coview_rows=tables[2].num_rows,
        final_snapshot=final,
    )
