"""Business signals of a window of the event log: CTR, coverage, diversity, concentration, long tail.

A served list is the set of ``impression`` events sharing a ``request_id``, in ``position`` order; a click
counts for CTR when it carries the same ``request_id`` and item as an impression (the event log joined to
the served responses by request id). A log without impressions (MovieLens ratings) has no served lists,
and these signals are reported as unavailable rather than as zeros.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import pandas as pd

from evaluation.beyond_accuracy import (
    catalogue_coverage,
    category_diversity,
    exposure_gini,
    long_tail_share,
)

BUSINESS_METRICS: tuple[str, ...] = ("ctr", "coverage", "diversity", "popularity_gini", "long_tail_share")


def served_lists(events: pd.DataFrame) -> list[list[str]]:
    """The item lists shown per request (impressions with a request id, ordered by position)."""
    shown = events[(events["event_type"] == "impression") & events["request_id"].notna()]
    if shown.empty:
        return []
    shown = shown.sort_values(["request_id", "position"], kind="stable")
    return [group.astype(str).tolist() for _, group in shown.groupby("request_id", sort=True)["item_id"]]


def click_through_rate(events: pd.DataFrame) -> float:
    """Share of impressions clicked within the same request; NaN without impressions.

    >>> log = pd.DataFrame({"event_type": ["impression", "impression", "click", "click"],
    ...                     "request_id": ["r1", "r1", "r1", "r2"], "item_id": ["a", "b", "a", "a"]})
    >>> click_through_rate(log)
    0.5
    """
    with_request = events[events["request_id"].notna()]
    shown = with_request[with_request["event_type"] == "impression"][["request_id", "item_id"]]
    if shown.empty:
        return float("nan")
    shown = shown.drop_duplicates()
    joined = shown.merge(clicked_pairs(with_request), on=["request_id", "item_id"], how="inner")
    return len(joined) / len(shown)


def clicked_pairs(events: pd.DataFrame) -> pd.DataFrame:
    """Distinct (request_id, item_id) of the clicks that carry a request id: what a served item joins to."""
    clicks = events[(events["event_type"] == "click") & events["request_id"].notna()]
    return clicks[["request_id", "item_id"]].drop_duplicates()


def business_metrics(
    events: pd.DataFrame,
    catalogue: Sequence[str],
    categories: Mapping[str, Collection[str]],
    interaction_counts: Mapping[str, float],
) -> dict[str, float]:
    """Every business signal of one window; an empty dict when the window holds no served list.

    Args:
        events: the window's events.
        catalogue: every item that could have been shown (coverage and Gini are over it).
        categories: item id -> categories, for intra-list category diversity (Jaccard distance).
        interaction_counts: item -> interactions in the reference window; its head (20% of interactions)
            defines the long tail, so the current window is judged against a fixed head.
    """
    lists = served_lists(events)
    if not lists:
        return {}
    metrics = {
        "ctr": click_through_rate(events),
        "coverage": catalogue_coverage(lists, catalogue),
        "popularity_gini": exposure_gini(lists, catalogue),
        "diversity": category_diversity(lists, categories),
    }
    if interaction_counts and sum(interaction_counts.values()) > 0:
        metrics["long_tail_share"] = long_tail_share(lists, interaction_counts)
    return metrics
