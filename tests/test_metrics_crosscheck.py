"""Ranking metrics against independent implementations on seeded random users.

scikit-learn scores a full score vector per user, so the ranked list here covers the whole (small)
catalogue; then its `ndcg_score` (linear gain) and `average_precision_score` match our definitions.
ranx (the IR evaluation library) computes the same top-K definitions from a run and qrels.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from evaluation.metrics import ranking_metrics

N_ITEMS = 30
N_USERS = 25
ITEMS = [f"i{n}" for n in range(N_ITEMS)]


def _random_users(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_users, n_items) scores without ties and graded relevance 0..3, each user with a relevant item."""
    rng = np.random.default_rng(seed)
    scores = rng.random((N_USERS, N_ITEMS))
    grades = rng.choice([0, 0, 0, 1, 2, 3], size=(N_USERS, N_ITEMS)).astype(float)
    grades[:, 0] = np.maximum(grades[:, 0], 1)  # nobody without a relevant item
    return scores, grades


def _as_mappings(
    scores: np.ndarray, grades: np.ndarray
) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    rankings = {f"u{u}": [ITEMS[j] for j in np.argsort(-scores[u])] for u in range(N_USERS)}
    relevant = {
        f"u{u}": {ITEMS[j]: grades[u, j] for j in range(N_ITEMS) if grades[u, j] > 0} for u in range(N_USERS)
    }
    return rankings, relevant


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 10, N_ITEMS])
def test_graded_ndcg_matches_scikit_learn(seed: int, k: int) -> None:
    scores, grades = _random_users(seed)
    rankings, relevant = _as_mappings(scores, grades)
    ours = ranking_metrics(rankings, relevant, [k])[f"ndcg@{k}"]
    assert ours == pytest.approx(ndcg_score(grades, scores, k=k))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_over_the_full_list_matches_scikit_learn(seed: int) -> None:
    # with K = the whole catalogue every relevant item is ranked, and AP@K is sklearn's AP
    scores, grades = _random_users(seed)
    rankings, relevant = _as_mappings(scores, grades)
    ours = ranking_metrics(rankings, relevant, [N_ITEMS])[f"map@{N_ITEMS}"]
    theirs = np.mean([average_precision_score(grades[u] > 0, scores[u]) for u in range(N_USERS)])
    assert ours == pytest.approx(theirs)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:unsafe cast")
@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_metrics_match_ranx(seed: int) -> None:
    ranx = pytest.importorskip("ranx")
    scores, grades = _random_users(seed)
    # ranked lists shorter than the catalogue, so K past the list's end is checked too
    rankings, relevant = _as_mappings(scores, grades)
    rankings = {u: r[:12] for u, r in rankings.items()}
    qrels = ranx.Qrels({u: {i: int(g) for i, g in rel.items()} for u, rel in relevant.items()})
    run = ranx.Run(
        {u: {item: float(len(r) - pos) for pos, item in enumerate(r)} for u, r in rankings.items()}
    )
    ks = [1, 5, 10, 20]
    names = {
        "precision": "precision",
        "recall": "recall",
        "ndcg": "ndcg",
        "mrr": "mrr",
        "map": "map",
        "hit_rate": "hit_rate",
    }
    wanted = [f"{theirs}@{k}" for theirs in names.values() for k in ks]
    theirs = ranx.evaluate(qrels, run, wanted)
    ours = ranking_metrics(rankings, relevant, ks)
    for our_name, their_name in names.items():
        for k in ks:
            assert ours[f"{our_name}@{k}"] == pytest.approx(theirs[f"{their_name}@{k}"]), f"{our_name}@{k}"
