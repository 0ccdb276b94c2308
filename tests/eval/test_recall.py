import numpy as np

from dist_geo.eval.recall import find_positives, recall_at_n


def brute_force_recalls(db_desc, q_desc, db_utm, q_utm, threshold, values):
    """The benchmark's loop, written out with full distance matrices."""
    predictions = np.argsort(-(q_desc @ db_desc.T), axis=1, kind="stable")
    geo = np.linalg.norm(q_utm[:, None] - db_utm[None], axis=2)
    recalls = np.zeros(len(values))
    for q, preds in enumerate(predictions):
        positives = np.flatnonzero(geo[q] <= threshold)
        for i, n in enumerate(values):
            if np.any(np.isin(preds[:n], positives)):
                recalls[i:] += 1
                break
    return recalls / len(q_desc) * 100, int((geo.min(axis=1) > threshold).sum())


def test_hand_made_example():
    db_utm = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0]])
    q_utm = np.array([[10.0, 0.0], [195.0, 0.0], [1000.0, 0.0]])
    positives = find_positives(db_utm, q_utm, 25.0)
    assert [p.tolist() for p in positives] == [[0], [2], []]
    predictions = np.array([[0, 1, 2], [1, 2, 0], [0, 1, 2]])
    m = recall_at_n(predictions, positives, [1, 2, 3])
    # query 0 right at rank 1, query 1 at rank 2, query 2 never (no positive): over 3 queries
    assert m["recall_at_1"] == 100 / 3
    assert m["recall_at_2"] == 200 / 3
    assert m["recall_at_3"] == 200 / 3
    assert m["queries"] == 3 and m["queries_without_positives"] == 1


def test_matches_brute_force_reference():
    rng = np.random.default_rng(0)
    db_desc = rng.standard_normal((300, 16)).astype(np.float32)
    q_desc = rng.standard_normal((80, 16)).astype(np.float32)
    db_utm = rng.uniform(0, 500, (300, 2))
    q_utm = rng.uniform(-50, 550, (80, 2))
    values = [1, 5, 10, 20]
    predictions = np.argsort(-(q_desc @ db_desc.T), axis=1, kind="stable")[:, :20]
    m = recall_at_n(predictions, find_positives(db_utm, q_utm, 25.0), values)
    expected, without = brute_force_recalls(db_desc, q_desc, db_utm, q_utm, 25.0, values)
    assert without > 0
    assert m["queries_without_positives"] == without
    np.testing.assert_allclose([m[f"recall_at_{n}"] for n in values], expected)
