"""Ranking metrics against independent implementations on seeded random users.

scikit-learn scores a full score vector per user, so the ranked list here covers the whole (small)
catalogue; then its `ndcg_score` (linear gain) and `average_precision_score` match our definitions.
trec_eval (through pytrec_eval) computes the same top-K definitions from a run and qrels.
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


@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_metrics_match_trec_eval(seed: int) -> None:
    import pytrec_eval

    scores, grades = _random_users(seed)
    # ranked lists shorter than the catalogue, so K past the list's end is checked too
    rankings, relevant = _as_mappings(scores, grades)
    rankings = {u: r[:12] for u, r in rankings.items()}
    qrels = {u: {i: int(g) for i, g in rel.items()} for u, rel in relevant.items()}
    ks = [1, 5, 10, 20]
    ours = ranking_metrics(rankings, relevant, ks)
    for k in ks:
        # trec_eval's reciprocal rank and success have no cut-off of their own: the run is cut at K.
        run = {u: {item: float(len(r) - pos) for pos, item in enumerate(r[:k])} for u, r in rankings.items()}
        measures = {f"P.{k}", f"recall.{k}", f"ndcg_cut.{k}", f"map_cut.{k}", "recip_rank", f"success.{k}"}
        per_user = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
        names = {
            "precision": f"P_{k}",
            "recall": f"recall_{k}",
            "ndcg": f"ndcg_cut_{k}",
            "map": f"map_cut_{k}",
            "mrr": "recip_rank",
            "hit_rate": f"success_{k}",
        }
        for our_name, their_name in names.items():
            theirs = np.mean([values[their_name] for values in per_user.values()])
            assert ours[f"{our_name}@{k}"] == pytest.approx(theirs), f"{our_name}@{k}"
