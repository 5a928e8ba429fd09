"""Tests for clear_lab.metrics: hand-computed rankings, masking, batching, brute-force reference."""

import json
from math import log2

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from clear_lab.metrics import evaluate, ranking_metrics

KS = (1, 2, 3, 4, 5)
TOL = 1e-12


def csr(rows: dict[int, list[int]], shape: tuple[int, int]) -> sp.csr_matrix:
    r = [u for u, items in rows.items() for _ in items]
    c = [i for items in rows.values() for i in items]
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=shape)


# -----------------------------------------------------------------------------
# hand-computed users, ks = 1..5

# A: truth {2, 5}, ranking [5, 1, 2, 7, 9] -> rel = [1, 0, 1, 0, 0], |T| = 2
# B: truth {0, 1, 2, 3}, ranking [0, 9, 1, 8, 7] -> rel = [1, 0, 1, 0, 0], |T| = 4 > k for k < 4
# C: truth {4}, ranking [0, 1, 2, 3, 5] -> no hit
IDCG = [sum(1 / log2(i + 1) for i in range(1, j + 1)) for j in range(6)]  # IDCG[j] = sum_{i<=j} 1/log2(i+1)

EXPECTED = {
    "A": {
        "recall": [1 / 2, 1 / 2, 2 / 2, 2 / 2, 2 / 2],
        "precision": [1 / 1, 1 / 2, 2 / 3, 2 / 4, 2 / 5],
        # DCG: rank 1 -> 1/log2(2) = 1, rank 3 -> 1/log2(4) = 0.5; IDCG over min(k, 2) ranks
        "ndcg": [
            (1 / log2(2)) / (1 / log2(2)),
            (1 / log2(2)) / (1 / log2(2) + 1 / log2(3)),
            (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3)),
            (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3)),
            (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3)),
        ],
        # MAP@k = (P@1 * 1 + P@3 * 1 [if k >= 3]) / min(k, 2), with P@1 = 1, P@3 = 2/3
        "map": [1 / 1, 1 / 2, (1 + 2 / 3) / 2, (1 + 2 / 3) / 2, (1 + 2 / 3) / 2],
    },
    "B": {
        "recall": [1 / 4, 1 / 4, 2 / 4, 2 / 4, 2 / 4],  # denominator is |T| = 4 even for k < 4
        "precision": [1 / 1, 1 / 2, 2 / 3, 2 / 4, 2 / 5],
        "ndcg": [  # IDCG over min(k, 4) ranks
            1 / (1 / log2(2)),
            1 / (1 / log2(2) + 1 / log2(3)),
            (1 + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4)),
            (1 + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4) + 1 / log2(5)),
            (1 + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4) + 1 / log2(5)),
        ],
        "map": [1 / 1, 1 / 2, (1 + 2 / 3) / 3, (1 + 2 / 3) / 4, (1 + 2 / 3) / 4],  # / min(k, 4)
    },
    "C": {m: [0.0] * 5 for m in ("recall", "precision", "ndcg", "map")},
}
HITS = np.array([[1, 0, 1, 0, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
N_REL = np.array([2, 4, 1])


def check_expected(per_user: dict[str, np.ndarray], names: str = "ABC") -> None:
    for row, name in enumerate(names):
        for metric, values in EXPECTED[name].items():
            for k, v in zip(KS, values):
                got = per_user[f"{metric}@{k}"][row]
                assert abs(got - v) < TOL, (name, metric, k, got, v)


def test_idcg_table_by_hand():
    assert IDCG[2] == 1 / log2(2) + 1 / log2(3)
    assert abs(IDCG[4] - (1 + 1 / log2(3) + 0.5 + 1 / log2(5))) < TOL


def test_ranking_metrics_hand_values():
    out = ranking_metrics(HITS, N_REL, KS)
    check_expected(out)
    assert all(v.dtype == np.float64 and v.shape == (3,) for v in out.values())
    # keys: lower case, metric-major like MMRec
    assert list(out)[:6] == ["recall@1", "recall@2", "recall@3", "recall@4", "recall@5", "ndcg@1"]


def test_ranking_metrics_accepts_torch_and_wider_hits():
    wide = np.concatenate([HITS, np.zeros((3, 7), dtype=bool)], axis=1)  # extra ranks are ignored
    out = ranking_metrics(torch.from_numpy(wide), torch.from_numpy(N_REL), KS)
    check_expected(out)
    out = ranking_metrics(HITS.astype(np.int64), N_REL, ks=[5, 1, 3, 3, 2, 4])  # unsorted, repeated ks
    check_expected(out)


def test_ranking_metrics_validation():
    with pytest.raises(ValueError, match="max\\(ks\\)"):
        ranking_metrics(HITS, N_REL, ks=(10,))
    with pytest.raises(ValueError, match="n_relevant"):
        ranking_metrics(HITS, np.array([2, 4]), KS)
    with pytest.raises(ValueError, match=">= 1"):
        ranking_metrics(HITS, np.array([2, 4, 0]), KS)
    with pytest.raises(ValueError, match="more hits"):
        ranking_metrics(HITS, np.array([1, 4, 1]), KS)
    with pytest.raises(ValueError, match="positive integers"):
        ranking_metrics(HITS, N_REL, ks=(0, 5))
    with pytest.raises(ValueError, match="boolean"):
        ranking_metrics(HITS * 2, N_REL, KS)


# -----------------------------------------------------------------------------
# evaluate() on the same three users, through real masking and topk

N_ITEMS = 10
TRUTH = {0: [2, 5], 1: [0, 1, 2, 3], 2: [4]}  # user 3 has no truth: not evaluated
TRAIN = {0: [0, 3], 1: [4, 5], 2: [6], 3: [1, 2]}
# full preference order per user, training items first: without masking they would fill the top
ORDER = {
    0: [0, 3, 5, 1, 2, 7, 9, 4, 6, 8],
    1: [4, 5, 0, 9, 1, 8, 7, 2, 3, 6],
    2: [6, 0, 1, 2, 3, 5, 7, 8, 9, 4],
    3: [1, 2, 0, 3, 4, 5, 6, 7, 8, 9],
}


def hand_scores() -> torch.Tensor:
    s = torch.zeros(4, N_ITEMS, dtype=torch.float64)
    for u, order in ORDER.items():
        s[u, order] = torch.arange(N_ITEMS, 0, -1, dtype=torch.float64)  # first = highest
    return s


def test_evaluate_masks_training_items_and_matches_hand_values():
    S = hand_scores()
    train, truth = csr(TRAIN, (4, N_ITEMS)), csr(TRUTH, (4, N_ITEMS))
    res = evaluate(lambda u: S[u], train, truth, ks=KS)
    np.testing.assert_array_equal(res.users, [0, 1, 2])  # user 3 has no truth
    check_expected(res.per_user)
    for key, v in res.per_user.items():
        assert res.mean[key] == pytest.approx(v.mean(), abs=TOL)
    assert res.n_users == 3 and res.seconds >= 0
    json.dumps(res.to_dict())
    # without masking, the training items would take ranks 1-2 and destroy the hand values
    unmasked = evaluate(lambda u: S[u], sp.csr_matrix((4, N_ITEMS)), truth, ks=KS)
    assert unmasked.per_user["recall@1"][0] == 0.0


def test_evaluate_extra_mask():
    S = hand_scores()
    train, truth = csr(TRAIN, (4, N_ITEMS)), csr(TRUTH, (4, N_ITEMS))
    # mask item 5 for user 0 (e.g. a validation item) and items 0, 9 for user 1
    extra = csr({0: [5], 1: [0, 9]}, (4, N_ITEMS))
    res = evaluate(lambda u: S[u], train, truth, ks=KS, extra_mask=extra)
    # user 0 ranking -> [1, 2, 7, 9, 4]; user 1 -> [1, 8, 7, 2, 3]; user 2 unchanged
    hits = np.array([[0, 1, 0, 0, 0], [1, 0, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=bool)
    ref = ranking_metrics(hits, N_REL, KS)
    for key in ref:
        np.testing.assert_allclose(res.per_user[key], ref[key], rtol=0, atol=TOL)
    assert res.per_user["recall@5"][1] == 3 / 4 and res.per_user["ndcg@1"][0] == 0.0


def test_evaluate_does_not_write_into_callers_scores():
    S = hand_scores()
    before = S.clone()
    train, truth = csr(TRAIN, (4, N_ITEMS)), csr(TRUTH, (4, N_ITEMS))
    # batch_size=1 and users 0..2 contiguous: S[u0 : u0 + 1] is a view of S
    res = evaluate(lambda u: S[int(u[0]) : int(u[-1]) + 1], train, truth, ks=KS, batch_size=1)
    check_expected(res.per_user)
    assert torch.equal(S, before)


def test_evaluate_validates_scores():
    S = hand_scores()
    train, truth = csr(TRAIN, (4, N_ITEMS)), csr(TRUTH, (4, N_ITEMS))
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: S[u][:, :-1], train, truth, ks=KS)
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: S, train, truth, ks=KS)  # all users instead of the batch
    S_nan = S.clone()
    S_nan[1, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate(lambda u: S_nan[u], train, truth, ks=KS)
    with pytest.raises(TypeError, match="floating"):
        evaluate(lambda u: S[u].long(), train, truth, ks=KS)
    with pytest.raises(ValueError, match="train_csr shape"):
        evaluate(lambda u: S[u], csr(TRAIN, (5, N_ITEMS)), truth, ks=KS)
    with pytest.raises(ValueError, match="no user"):
        evaluate(lambda u: S[u], train, sp.csr_matrix((4, N_ITEMS)), ks=KS)


def test_evaluate_inf_scores_are_allowed():
    S = hand_scores()
    S[0, 8] = float("inf")  # item 8 now ranks first for user 0 (and the sum screen sees inf - inf)
    S[0, 6] = float("-inf")
    train, truth = csr(TRAIN, (4, N_ITEMS)), csr(TRUTH, (4, N_ITEMS))
    res = evaluate(lambda u: S[u], train, truth, ks=KS)
    assert res.per_user["recall@1"][0] == 0.0 and res.per_user["recall@2"][0] == 0.5


# -----------------------------------------------------------------------------
# brute force on random data


def brute_force(scores: np.ndarray, train: sp.csr_matrix, truth: sp.csr_matrix, ks, mask=None):
    """Independent reference: per-user loop, argsort, metrics from their definitions."""
    out = {f"{m}@{k}": [] for m in ("recall", "ndcg", "precision", "map") for k in ks}
    users = []
    for u in range(truth.shape[0]):
        T = set(truth[u].indices.tolist())
        if not T:
            continue
        users.append(u)
        s = scores[u].copy()
        s[train[u].indices] = -np.inf
        if mask is not None:
            s[mask[u].indices] = -np.inf
        ranking = np.argsort(-s, kind="stable")
        rel = [1.0 if i in T else 0.0 for i in ranking[: max(ks)]]
        rel += [0.0] * (max(ks) - len(rel))  # catalogue shorter than max(ks): empty ranks are misses
        for k in ks:
            hk = sum(rel[:k])
            n = min(k, len(T))
            out[f"recall@{k}"].append(hk / len(T))
            out[f"precision@{k}"].append(hk / k)
            dcg = sum(rel[i - 1] / log2(i + 1) for i in range(1, k + 1))
            idcg = sum(1 / log2(i + 1) for i in range(1, n + 1))
            out[f"ndcg@{k}"].append(dcg / idcg)
            ap = sum(sum(rel[:i]) / i * rel[i - 1] for i in range(1, k + 1))
            out[f"map@{k}"].append(ap / n)
    return np.array(users), {key: np.array(v) for key, v in out.items()}


def random_case(seed: int, n_users: int = 70, n_items: int = 45):
    rng = np.random.default_rng(seed)
    draw = rng.random((n_users, n_items))
    train = sp.csr_matrix((draw < 0.2).astype(np.float64))
    truth = ((draw >= 0.2) & (draw < 0.3)).astype(np.float64)  # disjoint from train
    truth[rng.choice(n_users, 10, replace=False)] = 0  # some users without truth
    truth = sp.csr_matrix(truth)
    extra = sp.csr_matrix(((draw >= 0.9) & (draw < 0.95)).astype(np.float64))
    # distinct scores per user, so the ranking has no ties (topk and argsort would order ties differently)
    scores = np.stack([rng.permutation(n_items) for _ in range(n_users)]).astype(np.float32)
    return scores, train, truth, extra


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_matches_brute_force(seed):
    scores, train, truth, extra = random_case(seed)
    ks = (1, 3, 5, 10, 20)
    S = torch.from_numpy(scores)
    for mask in (None, extra):
        users, ref = brute_force(scores, train, truth, ks, mask)
        res = evaluate(lambda u: S[u], train, truth, ks=ks, batch_size=16, extra_mask=mask)
        np.testing.assert_array_equal(res.users, users)
        assert set(res.per_user) == set(ref)
        for key in ref:
            np.testing.assert_allclose(res.per_user[key], ref[key], rtol=0, atol=TOL, err_msg=key)
            assert abs(res.mean[key] - ref[key].mean()) < TOL


def test_batch_size_does_not_change_results():
    scores, train, truth, extra = random_case(3)
    S = torch.from_numpy(scores)
    a = evaluate(lambda u: S[u], train, truth, batch_size=1, extra_mask=extra)
    b = evaluate(lambda u: S[u], train, truth, batch_size=4096, extra_mask=extra)
    c = evaluate(lambda u: S[u], train, truth, batch_size=7, extra_mask=extra, device=torch.device("cpu"))
    assert list(a.mean) == [
        f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in (5, 10, 20, 50)
    ]
    for other in (b, c):
        np.testing.assert_array_equal(a.users, other.users)
        assert a.mean == other.mean
        for key in a.per_user:
            np.testing.assert_array_equal(a.per_user[key], other.per_user[key])


def test_catalogue_smaller_than_max_k():
    scores, train, truth, _ = random_case(4, n_users=20, n_items=12)
    S = torch.from_numpy(scores)
    res = evaluate(lambda u: S[u], train, truth, ks=(5, 50))
    users, ref = brute_force(scores, train, truth, (5, 50))
    for key in ref:
        np.testing.assert_allclose(res.per_user[key], ref[key], rtol=0, atol=TOL)
    # every truth item is retrieved once the list covers the whole catalogue
    assert (res.per_user["recall@50"] == 1.0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    scores, train, truth, extra = random_case(5)
    S = torch.from_numpy(scores)
    cpu = evaluate(lambda u: S[u], train, truth, extra_mask=extra, batch_size=8)
    Sg = S.cuda()
    gpu = evaluate(lambda u: Sg[u], train, truth, extra_mask=extra, batch_size=8, device="cuda")
    np.testing.assert_array_equal(cpu.users, gpu.users)
    for key in cpu.per_user:
        np.testing.assert_array_equal(cpu.per_user[key], gpu.per_user[key])
