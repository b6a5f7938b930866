"""Unit tests of the long-tail re-ranking rule (serving/rerank.py), known answers only."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from core.rerank import rerank, rerank_scores, tail_appetite, tail_share
from training.metrics import RankingAccumulator

PROB = np.array([0.9, 0.6, 0.5, 0.2, 0.1])
TAIL = np.array([0, 0, 1, 1, 1], dtype=bool)
IDS = ["h1", "h2", "t1", "t2", "t3"]


def ids_in_order(result) -> list[str]:
    return [IDS[k] for k in result.order]


def test_zero_weight_orders_by_probability() -> None:
    result = rerank(PROB, TAIL, IDS, tail_weight=0.0, p_tail=0.9)
    assert ids_in_order(result) == ["h1", "h2", "t1", "t2", "t3"]
    np.testing.assert_allclose(result.score, PROB, rtol=1e-6)
    assert not result.boost.any()


def test_full_weight_puts_tail_first_for_a_tail_loving_user() -> None:
    result = rerank(PROB, TAIL, IDS, tail_weight=1.0, p_tail=tail_appetite([1, 1, 1, 0]))
    # tail items tie on score; ties break by probability, so t1 > t2 > t3, then the head.
    assert ids_in_order(result) == ["t1", "t2", "t3", "h1", "h2"]


def test_known_answer_for_an_intermediate_weight() -> None:
    # lambda 0.5, P(tail|u) = 0.5: tail scores 0.5*p + 0.25, head scores 0.5*p.
    result = rerank(PROB, TAIL, IDS, tail_weight=0.5, p_tail=0.5)
    np.testing.assert_allclose(result.score, [0.45, 0.3, 0.5, 0.35, 0.3], rtol=1e-6)
    # h2 and t3 tie at 0.3: h2 has the higher probability.
    assert ids_in_order(result) == ["t1", "h1", "t2", "h2", "t3"]


def test_head_loving_user_gets_a_smaller_boost() -> None:
    fan = rerank(PROB, TAIL, IDS, 0.5, tail_appetite([1, 1, 1, 1, 1, 1, 1, 1]))
    skeptic = rerank(PROB, TAIL, IDS, 0.5, tail_appetite([0, 0, 0, 0, 0, 0, 0, 0]))
    assert fan.boost[2] > skeptic.boost[2] > 0
    assert ids_in_order(skeptic)[0] == "h1"


def test_equal_scores_break_ties_by_item_id() -> None:
    result = rerank(np.array([0.5, 0.5]), np.array([0, 0]), ["b", "a"], 0.3, 0.5)
    assert list(result.order) == [1, 0]


@pytest.mark.parametrize("seed", range(5))
def test_order_is_score_then_probability_then_id_with_and_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    prob = rng.choice([0.1, 0.3, 0.7], n) if seed % 2 else rng.random(n)  # odd seeds: ties
    tail = rng.random(n) > 0.6
    ids = [f"i{k}" for k in rng.permutation(n)]
    result = rerank(prob, tail, ids, 0.2, 0.4)
    score, _ = rerank_scores(prob, tail, 0.2, 0.4)  # float64, as the rule sorts
    expected = sorted(range(n), key=lambda k: (-score[k], -prob[k], ids[k]))
    assert list(result.order) == expected


def test_tail_appetite_is_laplace_smoothed() -> None:
    assert tail_appetite([]) == pytest.approx(0.5)
    assert tail_appetite([True, True]) == pytest.approx(0.75)
    assert tail_appetite(np.array([0, 0, 1])) == pytest.approx(0.4)


def test_tail_share_of_a_returned_list() -> None:
    assert tail_share(TAIL, np.array([2, 0])) == pytest.approx(0.5)
    assert tail_share(TAIL, np.array([], dtype=np.int64)) == 0.0


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_weight_outside_unit_interval_is_rejected(weight: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rerank(PROB, TAIL, IDS, weight, 0.5)


def test_mismatched_lengths_are_rejected() -> None:
    for prob, tail, ids in ((PROB, TAIL[:3], IDS), (PROB, TAIL, IDS[:4])):
        with pytest.raises(ValueError) as err:
            rerank(prob, tail, ids, 0.3, 0.5)
        assert str(err.value) == "prob, is_tail and item_ids must have the same length"


def test_block_scores_match_the_per_request_rule() -> None:
    # the offline sweep scores a [users, items] block with per-user appetites at once
    prob = np.vstack([PROB, PROB[::-1]])
    p_tail = np.array([[0.8], [0.2]])
    block, _ = rerank_scores(prob, TAIL, 0.3, p_tail)
    for row in range(2):
        one = rerank(prob[row], TAIL, IDS, 0.3, float(p_tail[row, 0]))
        np.testing.assert_allclose(block[row], one.score, rtol=1e-6)


def test_raising_the_weight_never_lowers_the_tail_share_of_a_top_k() -> None:
    # a tail item only ever overtakes head items as λ grows: APLT@K is monotone in λ
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 60
    prob = rng.random((n_users, n_items))
    tail = np.arange(n_items) >= 12
    p_tail = rng.random((n_users, 1))
    exclude = sp.csr_matrix((n_users, n_items))
    targets = rng.integers(0, n_items, n_users)
    aplt = []
    for weight in (0.0, 0.1, 0.3, 0.5, 0.9):
        acc = RankingAccumulator(np.arange(n_items, 0, -1), tail, k=10)
        acc.add(rerank_scores(prob, tail, weight, p_tail)[0], targets, exclude)
        aplt.append(acc.result()["APLT@10"])
    assert aplt == sorted(aplt) and aplt[-1] > aplt[0]


def test_block_appetite_matches_one_user_at_a_time_and_ignores_padding() -> None:
    flags = np.array([[1, 1, 0, 1], [0, 1, 0, 0]], dtype=bool)
    real = np.array([[False, True, True, True], [True, True, True, True]])
    block = tail_appetite(flags, real)
    assert block[0] == pytest.approx(tail_appetite([1, 0, 1]))  # the padded slot is dropped
    assert block[1] == pytest.approx(tail_appetite([0, 1, 0, 0]))


def test_no_candidates_give_an_empty_ranking() -> None:
    result = rerank(np.array([]), np.array([], dtype=bool), [], tail_weight=0.5, p_tail=0.5)
    assert result.order.dtype == np.int64 and result.order.shape == (0,)
    assert result.score.shape == (0,) and result.boost.shape == (0,)


def test_ranked_parts_are_float32_and_keep_the_appetite_used() -> None:
    result = rerank([0.9, 0.2], [False, True], ["h", "t"], tail_weight=0.5, p_tail=0.8)
    assert result.score.dtype == np.float32 and result.boost.dtype == np.float32
    assert result.p_tail == 0.8
    np.testing.assert_allclose(result.boost, [0.0, 0.4], rtol=1e-6)
    np.testing.assert_allclose(result.score, [0.45, 0.5], rtol=1e-6)
    assert result.order.tolist() == [1, 0]


def test_one_history_with_a_padding_mask() -> None:
    # a single history [L] with its mask [L]: the padded slot is neither tail nor counted
    assert tail_appetite([True, False, True], real=[True, True, False]) == pytest.approx(0.5)
    assert type(tail_appetite([True, False])) is float  # one history: a Python float
    # flags and mask may arrive as 0/1 numbers of any dtype
    block = tail_appetite(np.array([[1.0, 0.0, 1.0]]), real=np.array([[1.0, 1.0, 0.0]]))
    assert block.tolist() == pytest.approx([0.5])
