"""Metrics on hand-worked cases (training/metrics.py). Run: pytest tests/test_metrics.py"""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from training.evaluate import add_counting_cold
from training.metrics import (
    RankingAccumulator,
    ctr_metrics,
    evaluate_scorer,
    gini,
    set_metrics_at_k,
)

# 3 users x 5 items, K = 2. Item 0 is the only head item (top 20% of 5 by train count).
TRAIN_COUNTS = np.array([10, 8, 3, 1, 0])
IS_TAIL = np.array([0, 1, 1, 1, 1])
SCORES = np.array(
    [
        [0.9, 0.1, 0.5, 0.3, 0.2],  # item 0 excluded; target 2 ranks 0; list {2, 3}
        [0.8, 0.3, 0.6, 0.7, 0.1],  # item 2 excluded; target 3 ranks 1; list {0, 3}
        [0.6, 0.6, 0.6, 0.2, 0.9],  # item 4 excluded; target 0 ties 1, 2 -> rank 2; list {1, 2}
    ]
)
TARGETS = np.array([2, 3, 0])
EXCLUDE = sp.csr_matrix(([True, True, True], ([0, 1, 2], [0, 2, 4])), shape=(3, 5))


def _worked() -> dict[str, float]:
    acc = RankingAccumulator(TRAIN_COUNTS, IS_TAIL, k=2)
    acc.add(SCORES, TARGETS, EXCLUDE)
    return acc.result()


def test_hand_worked_example_accuracy() -> None:
    r = _worked()
    assert r["HR@2"] == pytest.approx(2 / 3)
    assert r["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert r["MRR@2"] == pytest.approx((1 + 1 / 2) / 3)
    assert r["TailHR@2"] == pytest.approx(1.0)  # targets 2 and 3 are tail, both hit
    assert r["HeadHR@2"] == pytest.approx(0.0)  # target 0 is head, lost its tie
    assert (r["n_users"], r["n_tail_cases"], r["n_head_cases"]) == (3, 2, 1)


def test_hand_worked_example_exposure() -> None:
    r = _worked()
    assert r["APLT@2"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert r["Coverage@2"] == pytest.approx(4 / 5)  # item 4 is never recommended
    assert r["Gini@2"] == pytest.approx(1 / 3)  # exposure [1, 1, 2, 2, 0]
    assert r["ARP@2"] == pytest.approx(((3 + 1) / 2 + (10 + 1) / 2 + (8 + 3) / 2) / 3)


def test_ties_go_against_the_target() -> None:
    acc = RankingAccumulator(np.ones(20), np.zeros(20), k=10)
    acc.add(np.zeros((4, 20)), np.array([0, 5, 10, 19]), sp.csr_matrix((4, 20), dtype=bool))
    r = acc.result()
    assert r["HR@10"] == 0.0  # a constant scorer never hits
    # tied lists fill by item index, skipping the target: targets 0 and 5 pull in item 10
    assert r["Coverage@10"] == pytest.approx(11 / 20)
    assert acc.exposure[:11].tolist() == [3, 4, 4, 4, 4, 3, 4, 4, 4, 4, 2]


def test_add_returns_the_ranks_it_scored_by() -> None:
    acc = RankingAccumulator(TRAIN_COUNTS, IS_TAIL, k=2)
    assert acc.add(SCORES, TARGETS, EXCLUDE).tolist() == [0, 1, 2]  # the worked example


def test_evaluation_cold_hits_agree_with_the_accumulator() -> None:
    """evaluate's ColdHR counting and RankingAccumulator rank by one rule: ties against
    the target, NaN as -inf, excluded items out, a target in its own mask kept."""
    scores = np.array(
        [
            [0.9, 0.9, 0.5, np.nan, 0.1],  # target 1 ties item 0 -> rank 1: miss at K=1
            [0.2, 0.8, 0.8, 0.1, 0.3],  # target 2 ties item 1, which is excluded -> rank 0
            [np.nan, 0.4, 0.4, 0.4, 0.7],  # target 3 (in its mask) ties 1, 2; 4 out -> rank 2
            [0.3, 0.3, 0.3, 0.3, 0.3],  # constant scores: target 4 -> rank 4
            [np.nan, 0.1, 0.2, 0.3, 0.6],  # target 4 alone on top -> rank 0, but warm
        ]
    )
    targets = np.array([1, 2, 3, 4, 4])
    mask = np.zeros(scores.shape, dtype=bool)
    mask[1, 1] = mask[2, 3] = mask[2, 4] = True
    exclude = sp.csr_matrix(mask)
    cold = np.array([True, True, True, True, False])
    counts, tail = np.ones(5), np.ones(5)

    acc = RankingAccumulator(counts, tail, k=1)
    hits = add_counting_cold(acc, scores, targets, exclude, cold)
    assert hits == 1  # only user 1's cold target ranks first
    cold_only = RankingAccumulator(counts, tail, k=1)
    ranks = cold_only.add(scores[cold], targets[cold], exclude[np.flatnonzero(cold)])
    assert ranks.tolist() == [1, 0, 2, 4]
    assert cold_only.result()["HR@1"] * cold.sum() == hits
    wide = RankingAccumulator(counts, tail, k=4)
    assert add_counting_cold(wide, scores, targets, exclude, cold) == 3  # ranks 1, 0, 2 < 4


def test_exclusion_mask_removes_items_before_ranking() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    open_ = RankingAccumulator(np.ones(5), np.ones(5), k=1)
    open_.add(scores, np.array([2]), sp.csr_matrix((1, 5), dtype=bool))
    masked = RankingAccumulator(np.ones(5), np.ones(5), k=1)
    masked.add(scores, np.array([2]), sp.csr_matrix(np.array([[1, 1, 0, 0, 0]], dtype=bool)))
    assert open_.result()["HR@1"] == 0.0
    assert masked.result()["HR@1"] == 1.0
    assert masked.exposure.tolist() == [0, 0, 1, 0, 0]  # excluded items never listed


def test_target_inside_its_mask_stays_rankable_and_is_counted() -> None:
    acc = RankingAccumulator(np.ones(3), np.ones(3), k=1)
    acc.add(np.array([[0.1, 0.9, 0.2]]), np.array([1]), sp.csr_matrix(np.eye(3, dtype=bool)[1:2]))
    r = acc.result()
    assert r["HR@1"] == 1.0
    assert r["n_target_excluded"] == 1.0


def test_nan_scores_rank_last_and_are_counted() -> None:
    acc = RankingAccumulator(np.ones(4), np.ones(4), k=2)
    scores = np.array([[np.nan, 0.5, 0.1, 0.2], [0.3, np.nan, 0.2, 0.1]])
    acc.add(scores, np.array([3, 1]), sp.csr_matrix((2, 4), dtype=bool))
    r = acc.result()
    assert r["HR@2"] == pytest.approx(0.5)  # user 0 hits at rank 1; user 1's NaN target misses
    assert r["n_nan_scores"] == 2.0
    assert acc.exposure.tolist() == [1, 1, 1, 1]  # user 0: {1, 3}; user 1: {0, 2}
    assert math.isnan(r["HeadHR@2"])  # no head case: undefined, not 0
    assert all(math.isfinite(v) for key, v in r.items() if key != "HeadHR@2")


def test_short_catalogue_lists_every_valid_item() -> None:
    acc = RankingAccumulator(np.array([3, 2, 1]), np.array([0, 1, 1]), k=10)
    acc.add(np.array([[0.3, 0.2, 0.1]]), np.array([2]), sp.csr_matrix(np.array([[1, 0, 0]])))
    r = acc.result()
    assert r["HR@10"] == 1.0
    assert r["APLT@10"] == pytest.approx(1.0)  # list {1, 2}, both tail
    assert r["ARP@10"] == pytest.approx(1.5)


def test_chunked_add_equals_one_shot() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 57, 40
    counts = rng.integers(0, 50, n_items)
    tail = (rng.random(n_items) < 0.7).astype(int)
    scores = rng.random((n_users, n_items)).round(1)  # rounding makes ties frequent
    scores[rng.random(scores.shape) < 0.02] = np.nan
    targets = rng.integers(0, n_items, n_users)
    exclude = sp.random(n_users, n_items, density=0.2, random_state=1, format="csr") > 0
    one = RankingAccumulator(counts, tail, k=5)
    one.add(scores, targets, exclude)
    chunked = RankingAccumulator(counts, tail, k=5)
    for start in range(0, n_users, 10):
        sl = slice(start, start + 10)
        chunked.add(scores[sl], targets[sl], exclude[sl])
    a, b = one.result(), chunked.result()
    c = evaluate_scorer(
        lambda u: scores[u], np.arange(n_users), targets, exclude, counts, tail, 5, 8
    )
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key]), key
        assert c[key] == pytest.approx(a[key]), key


def test_gini_of_equal_and_single_item_exposure() -> None:
    assert gini(np.full(8, 3)) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 0, 12])) == pytest.approx(4 / 5)
    assert gini(np.zeros(5)) == 0.0


def test_bad_shapes_fail_with_a_message() -> None:
    acc = RankingAccumulator(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="one column per catalogue item"):
        acc.add(np.zeros((2, 4)), np.array([0, 1]), sp.csr_matrix((2, 4)))
    with pytest.raises(ValueError, match="targets must be item columns"):
        acc.add(np.zeros((1, 5)), np.array([7]), sp.csr_matrix((1, 5)))
    with pytest.raises(ValueError, match="one entry per item"):
        RankingAccumulator(np.ones(5), np.ones(4))


def test_ctr_metrics_hand_worked() -> None:
    r = ctr_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.4]))
    assert r["AUC"] == pytest.approx(3.5 / 4)  # 3 wins and one tie out of 4 pairs
    expected = -(math.log(0.9) + math.log(0.9) + math.log(0.4) + math.log(0.6)) / 4
    assert r["LogLoss"] == pytest.approx(expected)
    clipped = ctr_metrics(np.array([1, 0]), np.array([0.0, 1.0]))
    assert math.isfinite(clipped["LogLoss"]) and clipped["AUC"] == 0.0
    assert math.isnan(ctr_metrics(np.array([1, 1]), np.array([0.2, 0.3]))["AUC"])
    with pytest.raises(ValueError, match="NaN"):
        ctr_metrics(np.array([1, 0]), np.array([np.nan, 0.3]))


def test_set_metrics_hand_worked() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.5, 0.5, 0.5, 0.5, 0.5]])
    exclude = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=bool))
    targets = [np.array([1, 4]), np.array([0, 1, 2])]
    r = set_metrics_at_k(scores, targets, exclude, k=2)
    # user 0: list {1, 2}, one hit: P = 1/2, R = 1/2, F1 = 1/2.
    # user 1: all tied, so the list is the two non-targets {3, 4}: no hit.
    assert r["Precision@2"] == pytest.approx(0.25)
    assert r["Recall@2"] == pytest.approx(0.25)
    assert r["F1@2"] == pytest.approx(0.25)
    assert r["n_users"] == 2.0


# --- limits and degenerate cases ------------------------------------------------------------
def test_top_k_lists_hold_exactly_k_items_however_many_tie() -> None:
    # user 0: one item above the 2nd score, four tied at it; user 1: every item tied
    acc = RankingAccumulator(np.arange(5), np.ones(5), k=2)
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3, 0.3]])
    acc.add(scores, np.array([4, 0]), sp.csr_matrix((2, 5), dtype=bool))
    # user 0 -> {0, 1}: the tie fills by index, the target (4) last; user 1 -> {1, 2}
    assert acc.exposure.tolist() == [1, 2, 1, 0, 0]
    assert acc.result()["ARP@2"] == pytest.approx(((0 + 1) / 2 + (1 + 2) / 2) / 2)


def test_a_tied_target_fills_the_last_place_after_tied_non_targets() -> None:
    # K = 3: item 0 above; items 1 (other) and 2 (target) tied at the 3rd score
    acc = RankingAccumulator(np.ones(4), np.array([0, 1, 1, 1]), k=3)
    acc.add(np.array([[0.9, 0.5, 0.5, 0.1]]), np.array([2]), sp.csr_matrix((1, 4), dtype=bool))
    assert acc.exposure.tolist() == [1, 1, 1, 0]
    assert acc.result()["HR@3"] == 1.0  # rank 2 (0.9 and the tied 0.5 go first) < 3


def test_head_hits_add_up_positively() -> None:
    # items 0, 1 head; user 0 hits head item 0, user 1 misses head item 1, user 2 hits tail 3
    acc = RankingAccumulator(np.array([9, 8, 1, 1]), np.array([0, 0, 1, 1]), k=1)
    scores = np.array([[0.9, 0.1, 0.2, 0.3], [0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.9]])
    acc.add(scores, np.array([0, 1, 3]), sp.csr_matrix((3, 4), dtype=bool))
    r = acc.result()
    assert (r["HeadHR@1"], r["TailHR@1"], r["HR@1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    # one-item lists: {0}, {0}, {3}
    assert r["APLT@1"] == pytest.approx(1 / 3) and r["ARP@1"] == pytest.approx((9 + 9 + 1) / 3)


def test_defaults_are_k_10() -> None:
    acc = RankingAccumulator(np.ones(3), np.ones(3))
    acc.add(np.array([[0.3, 0.2, 0.1]]), np.array([2]), sp.csr_matrix((1, 3), dtype=bool))
    assert acc.result()["HR@10"] == 1.0 and acc.exposure.tolist() == [1, 1, 1]
    r = evaluate_scorer(lambda u: np.array([[0.3, 0.2, 0.1]]), np.array([0]), np.array([2]),
                        sp.csr_matrix((1, 3), dtype=bool), np.ones(3), np.ones(3))  # fmt: skip
    assert r["HR@10"] == 1.0
    s = set_metrics_at_k(np.array([[0.3, 0.2, 0.1]]), [np.array([2])], sp.csr_matrix((1, 3)))
    assert s["Recall@10"] == 1.0 and s["Precision@10"] == pytest.approx(0.1)


def test_target_column_must_lie_inside_the_catalogue() -> None:
    acc = RankingAccumulator(np.ones(5), np.ones(5), k=2)
    acc.add(np.zeros((1, 5)), np.array([4]), sp.csr_matrix((1, 5)))  # the last column: fine
    for bad in (5, -1):
        with pytest.raises(ValueError) as err:
            acc.add(np.zeros((1, 5)), np.array([bad]), sp.csr_matrix((1, 5)))
        assert str(err.value) == "targets must be item columns in [0, 5)"
    with pytest.raises(ValueError) as err:
        acc.add(np.zeros((2, 5)), np.array([1, 2, 3]), sp.csr_matrix((2, 5)))
    assert str(err.value) == "targets has 3 entries for 2 rows"
    acc.add(np.zeros((2, 5)), np.array([[1], [2]]), sp.csr_matrix((2, 5)))  # a column: fine
    assert acc.result()["n_users"] == 3.0


def test_exclude_must_be_sparse_and_stored_zeros_do_not_exclude() -> None:
    acc = RankingAccumulator(np.ones(3), np.ones(3), k=1)
    with pytest.raises(ValueError) as err:
        acc.add(np.zeros((1, 3)), np.array([0]), np.zeros((1, 3), dtype=bool))
    assert str(err.value) == (
        "exclude must be a scipy.sparse matrix of shape (1, 3) (the users' train items), "
        "got ndarray (1, 3)"
    )
    with pytest.raises(ValueError, match=r"\(the users' train items\), got list None$"):
        acc.add(np.zeros((1, 3)), np.array([0]), [[0, 0, 0]])
    # an explicitly stored 0 at item 0 (the best score) is not an exclusion
    stored_zero = sp.csr_matrix((np.array([0, 1]), (np.array([0, 0]), np.array([0, 1]))), (1, 3))
    assert stored_zero.nnz == 2
    acc.add(np.array([[0.9, 0.8, 0.1]]), np.array([2]), stored_zero)
    assert acc.exposure.tolist() == [1, 0, 0]


def test_bad_k_and_shapes_name_what_is_wrong() -> None:
    with pytest.raises(ValueError) as err:
        RankingAccumulator(np.ones(3), np.ones(3), k=0)
    assert str(err.value) == "k must be >= 1, got 0"
    with pytest.raises(ValueError) as err:
        RankingAccumulator(np.ones((2, 3)), np.ones((2, 3)))
    assert str(err.value) == (
        "train_counts and is_tail must both be 1-D with one entry per item, got (2, 3) and (2, 3)"
    )


def test_problems_in_a_chunk_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    acc = RankingAccumulator(np.ones(3), np.ones(3), k=1)
    with caplog.at_level("WARNING", logger="training.metrics"):
        acc.add(np.array([[0.2, 0.1, 0.3]]), np.array([0]), sp.csr_matrix((1, 3)))
        assert not caplog.records  # a clean chunk logs nothing
        acc.add(np.array([[np.nan, 0.1, 0.3]]), np.array([1]), sp.csr_matrix((1, 3)))
        # a repeat interaction (target in its own exclusion mask): counted, not warned
        acc.add(
            np.array([[0.2, 0.1, 0.3]]), np.array([2]), sp.csr_matrix(([1], ([0], [2])), (1, 3))
        )
    assert [r.getMessage() for r in caplog.records] == [
        "chunk of 1 users: 1 NaN scores ranked as -inf"
    ]
    assert acc.result()["n_target_excluded"] == 1


def test_set_metrics_for_users_with_zero_or_one_held_out_items() -> None:
    scores = np.array([[0.9, 0.8, 0.1], [0.9, 0.8, 0.1], [0.1, 0.2, 0.9]])
    exclude = sp.csr_matrix((3, 3), dtype=bool)
    targets = [np.array([], dtype=np.int64), np.array([1]), np.array([2])]
    r = set_metrics_at_k(scores, targets, exclude, k=2)
    # user 0 is skipped; user 1: list {0, 1}, 1 hit; user 2: list {2, 1}, 1 hit
    assert r["n_users"] == 2.0
    assert r["Precision@2"] == pytest.approx(0.5)
    assert r["Recall@2"] == pytest.approx(1.0)
    assert r["F1@2"] == pytest.approx(2 / 3)
    single = set_metrics_at_k(scores[1:2], [np.array([1])], exclude[1:2], k=1)
    assert (single["Precision@1"], single["Recall@1"], single["F1@1"]) == (0.0, 0.0, 0.0)


def test_set_metrics_log_nan_scores(caplog: pytest.LogCaptureFixture) -> None:
    scores = np.array([[np.nan, 0.5, np.nan]])
    with caplog.at_level("WARNING", logger="training.metrics"):
        r = set_metrics_at_k(scores, [np.array([0])], sp.csr_matrix((1, 3)), k=1)
    assert r["Recall@1"] == 0.0  # the NaN target ranks last
    assert [rec.getMessage() for rec in caplog.records] == ["2 NaN scores ranked as -inf"]


def test_set_metrics_without_any_held_out_item_are_nan(recwarn: pytest.WarningsRecorder) -> None:
    r = set_metrics_at_k(np.zeros((2, 3)), [[], []], sp.csr_matrix((2, 3)), k=2)
    assert r["n_users"] == 0.0
    assert all(math.isnan(r[key]) for key in ("Precision@2", "Recall@2", "F1@2"))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no mean([])
    with pytest.raises(ValueError) as err:
        set_metrics_at_k(np.zeros((2, 3)), [[]], sp.csr_matrix((2, 3)))
    assert str(err.value) == "target_sets has 1 entries for 2 rows"


def test_ctr_metrics_inputs_are_checked(caplog: pytest.LogCaptureFixture) -> None:
    for labels, probs in (([], []), ([1, 0], [0.5])):
        with pytest.raises(ValueError) as err:
            ctr_metrics(np.array(labels), np.array(probs))
        assert str(err.value).startswith("labels and probs must be non-empty and equal-length")
    with pytest.raises(ValueError) as err:
        ctr_metrics(np.array([1, 2]), np.array([0.5, 0.5]))
    assert str(err.value) == "labels must be 0 or 1"
    one = ctr_metrics(np.array([[1]]), np.array([[0.8]]))  # one pair, any shape
    assert one["n_pairs"] == 1.0 and one["LogLoss"] == pytest.approx(-math.log(0.8))
    caplog.clear()
    with caplog.at_level("WARNING", logger="training.metrics"), np.errstate(all="raise"):
        negatives = ctr_metrics(np.array([0, 0]), np.array([0.2, 0.3]))  # no 0/0 is computed
    assert math.isnan(negatives["AUC"])
    assert [r.getMessage() for r in caplog.records] == [
        "AUC undefined: labels hold only one class (0 positives)"
    ]


def test_ctr_metrics_take_boolean_labels() -> None:
    probs = np.array([0.9, 0.1, 0.4, 0.4])
    flags = ctr_metrics(np.array([True, False, True, False]), probs)
    assert flags == ctr_metrics(np.array([1, 0, 1, 0]), probs)
    assert flags["AUC"] == pytest.approx(3.5 / 4)
