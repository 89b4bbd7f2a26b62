"""Paper-faithful protocol functions (plugins/tasks/protocols): each checked on fixed inputs against values
worked out by hand or against the library the authors called (scikit-learn, nltk)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dermbench_plugins.tasks.protocols import captions, dermino, panderm


def _four_images():
    """Four 2x2 masks; per-image lesion counts (tp, fp, fn, tn): A (1,0,1,2), B (0,0,0,4), C (3,0,1,0),
    D (1,1,0,2); pooled: tp 5, fp 1, fn 2, tn 8."""
    true = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 1], [1, 1]], [[0, 0], [0, 1]]], bool)
    pred = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[1, 1], [1, 0]], [[0, 1], [0, 1]]], bool)
    return pred, true


def test_dermino_segmentation_metric_pooled_over_a_batch_by_hand():
    pred, true = _four_images()
    np.testing.assert_array_equal(dermino.seg_counts(pred, true),
                                  [[1, 0, 1, 2], [0, 0, 0, 4], [3, 0, 1, 0], [1, 1, 0, 2]])
    s = dermino.dermino_seg_scores(pred, true)  # one batch (64 > 4)
    # lesion Dice 2*5/(10+1+2) = 10/13; background (tp 8, fp 2, fn 1) 16/19; mean incl. background
    assert s["dice"] == pytest.approx((10 / 13 + 16 / 19) / 2)
    # micro JAC over both classes: (5+8) / (5+8 + 3 + 3) = 13/19 = acc/(2-acc) with acc = 13/16
    assert s["jac"] == pytest.approx(13 / 19)
    assert s["jac"] == pytest.approx((13 / 16) / (2 - 13 / 16))
    # batches of 2, averaged unweighted: (A,B) dice (2/3+12/13)/2, jac 7/9; (C,D) dice (8/10+4/6)/2, jac 6/10
    s2 = dermino.dermino_seg_scores(pred, true, batch_size=2)
    assert s2["dice"] == pytest.approx(((2 / 3 + 12 / 13) / 2 + (8 / 10 + 4 / 6) / 2) / 2)
    assert s2["jac"] == pytest.approx((7 / 9 + 6 / 10) / 2)
    # a batch where only background occurs (image B alone) scores 1: the absent class is not averaged
    s1 = dermino.dermino_seg_scores(pred[1:2], true[1:2])
    assert (s1["dice"], s1["jac"]) == (1.0, 1.0)
    # for contrast: dermbench's default per-image lesion Dice of the same masks
    from dermbench_plugins.tasks.segmentation import dice_jaccard

    d, _ = dice_jaccard(pred, true)
    assert d.mean() == pytest.approx((2 / 3 + 1 + 6 / 7 + 2 / 3) / 4)


def test_dermino_segmentation_metric_bootstrap_lays_a_replicate_out_in_test_order():
    rng = np.random.default_rng(3)
    true = rng.random((70, 6, 6)) < 0.4
    pred = true ^ (rng.random((70, 6, 6)) < 0.2)
    counts = dermino.seg_counts(pred, true)
    point = dermino.dermino_seg_scores(pred, true)  # batches of 64 + 6
    assert point["n_batches"] == 2
    W = rng.multinomial(70, np.full(70, 1 / 70), size=3)
    d, j = dermino.dermino_seg_weighted(counts, W)
    for b in range(3):  # the same as expanding the multiset in test order and scoring it directly
        pos = np.repeat(np.arange(70), W[b])
        ref = dermino.dermino_seg_scores(pred[pos], true[pos])
        assert d[b] == pytest.approx(ref["dice"]) and j[b] == pytest.approx(ref["jac"])
    m = dermino.resolve_metric("dermino_dice")
    from dermbench import stats

    preds = {"ids": [str(i) for i in range(70)], **{k: counts[:, c] for c, k in
                                                      enumerate(("seg_tp", "seg_fp", "seg_fn", "seg_tn"))}}
    assert stats.point(preds, "dermino_dice") == pytest.approx(point["dice"])
    assert stats.point(preds, "dermino_jac") == pytest.approx(point["jac"])
    assert m.higher_is_better and dermino.resolve_metric("dice") is None


def test_dermino_probe_budget_and_stream():
    # "50 epochs" = 50 x epoch_length iterations: MED-Node 5 in total, PH2 100, Fitzpatrick-3 6500
    assert dermino.probe_iterations(50, dermino.epoch_length_for("mednode", "auto"), 100, 256) == 5
    assert dermino.probe_iterations(50, dermino.epoch_length_for("ph2", "auto"), 100, 256) == 100
    assert dermino.probe_iterations(50, dermino.epoch_length_for("fitzpatrick17k-3", "auto"), 9000, 256) == 6500
    # an unknown dataset under auto, or "epoch": true epochs of ceil(n / batch) steps
    assert dermino.epoch_length_for("dermsynth", "auto") is None
    assert dermino.probe_iterations(50, None, 600, 256) == 150
    assert dermino.epoch_length_for("x", "3.5") == 3.5
    with pytest.raises(ValueError, match="epoch_length"):
        dermino.epoch_length_for("x", "-1")
    import torch

    batches = dermino.stream_batches(5, 3, 4, torch.Generator().manual_seed(0))
    flat = torch.cat(batches).tolist()
    assert [len(b) for b in batches] == [3, 3, 3, 3]
    # consecutive passes are permutations; the second batch straddles passes 1 and 2
    assert sorted(flat[:5]) == [0, 1, 2, 3, 4] and sorted(flat[5:10]) == [0, 1, 2, 3, 4]


def test_knn_tie_rule_lowest_label_matches_sklearn():
    from sklearn.neighbors import KNeighborsClassifier

    # 4 neighbours: two of class 2 (close) and two of class 1 (farther): a 2-2 tie
    train = np.array([[1.0, 0.05], [1.0, -0.05], [1.0, 0.6], [1.0, -0.6], [-1.0, 0.0]])
    ytr = np.array([2, 2, 1, 1, 0])
    test = np.array([[1.0, 0.0]])
    votes = np.array([[0, 2, 2]])
    simsum = np.array([[0.0, 1.7, 1.99]])
    assert dermino.vote_argmax(votes, simsum, "lowest")[0] == 1
    assert dermino.vote_argmax(votes, simsum, "similarity")[0] == 2
    norm = train / np.linalg.norm(train, axis=1, keepdims=True)
    clf = KNeighborsClassifier(4).fit(norm, ytr)
    assert clf.predict(test / np.linalg.norm(test))[0] == 1
    with pytest.raises(ValueError, match="tie_break"):
        dermino.vote_argmax(votes, simsum, "random")


def _toy_classification(n=120, D=10, K=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D))
    y = rng.integers(0, K, n)
    X[np.arange(n), y] += 1.5
    return X, y


def test_panderm_lbfgs_squared_penalty_equals_sklearn():
    from sklearn.linear_model import LogisticRegression

    X, y = _toy_classification()
    c = 0.7  # sklearn: c * sum CE + 0.5 |W|^2  <=>  mean CE + |W|^2 / (2 n c)
    W, b = panderm.fit_logreg(X, y, 3, lam=1 / (2 * len(y) * c), norm="squared")
    sk = LogisticRegression(C=c, max_iter=10000, tol=1e-12).fit(X, y)
    np.testing.assert_allclose(W, sk.coef_, atol=1e-5)
    np.testing.assert_allclose(b - b.mean(), sk.intercept_ - sk.intercept_.mean(), atol=1e-5)
    np.testing.assert_allclose(panderm.predict_proba(W, b, X), sk.predict_proba(X), atol=1e-5)


def test_panderm_unsquared_penalty_optimum_is_sklearn_at_the_matching_C():
    """PanDerm's 0.5/C·|W| (unsquared): at its optimum W*, the stationarity condition is that of the squared
    problem with lambda2 = lambda/(2|W*|), i.e. sklearn's C = |W*| / (n lambda): the two fits coincide."""
    from sklearn.linear_model import LogisticRegression

    X, y = _toy_classification()
    assert panderm.auto_C(768, 2) == pytest.approx(15.36)
    lam = 0.5 / 20.0
    W, b = panderm.fit_logreg(X, y, 3, lam=lam)
    nw = np.linalg.norm(W)
    assert nw > 0.5
    sk = LogisticRegression(C=nw / (len(y) * lam), max_iter=10000, tol=1e-12).fit(X, y)
    np.testing.assert_allclose(W, sk.coef_, atol=1e-5)
    # the unsquared norm is a group-lasso kink at 0: a strong enough penalty gives exactly W = 0 (prior only)
    W0, b0 = panderm.fit_logreg(X, y, 3, lam=0.5 / panderm.auto_C(10, 3))
    assert np.linalg.norm(W0) < 1e-6
    np.testing.assert_allclose(panderm.predict_proba(W0, b0, X[:1])[0], np.bincount(y) / len(y), atol=1e-4)


def test_dermino_caption_bleu_equals_nltk_on_whitespace_tokens():
    from nltk.translate.bleu_score import corpus_bleu

    refs = ["a red scaly plaque on the elbow .", "dark brown macule with irregular border", "smooth nodule"]
    hyps = ["red scaly plaque on elbow .", "a brown macule with an irregular border", "a smooth pink nodule"]
    S = captions.bleu_stats(refs, hyps)
    # caption 1 unigrams: 6 hypothesis tokens all in the reference; bigrams: "red scaly", "scaly plaque",
    # "plaque on", "elbow ." match, "on elbow" does not -> 4 of 5
    assert S[0, :2].tolist() == [6, 4] and S[0, 4:6].tolist() == [6, 5] and S[0, 8:].tolist() == [6, 8]
    # matches 6 + 5 ("a", "an" unmatched) + 2 of 6 + 7 + 4 hypothesis tokens; 17 > 16 reference tokens: no
    # brevity penalty
    assert captions.bleu_from_stats(S.sum(0), 1)[0] == pytest.approx(13 / 17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about zero higher-order counts
        for n in (1, 2, 3, 4):
            ref = corpus_bleu([[r.split()] for r in refs], [h.split() for h in hyps], weights=captions.BLEU_WEIGHTS[n])
            assert captions.bleu_from_stats(S.sum(0), n)[0] == pytest.approx(ref, abs=1e-12)
    from dermbench import stats

    preds = {"ids": ["a", "b", "c"], "dermino_bleu_stats": S}
    assert stats.point(preds, "dermino_bleu1") == pytest.approx(13 / 17)


def test_dermino_caption_meteor_with_offline_wordnet(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(captions, "_WN", None)
    try:
        wn = captions.wordnet_reader()
    except captions.WordNetMissing as e:
        pytest.skip(str(e))
    from nltk.translate.meteor_score import meteor_score

    assert wn.synsets("lesion")[0].name() == "lesion.n.01"
    # identical 3 tokens: Fmean 1, one chunk: penalty 0.5 (1/3)^3 -> 1 - 1/54
    assert meteor_score([["the", "cats", "ran"]], ["the", "cats", "ran"], wordnet=wn) == pytest.approx(53 / 54)
    # "cat"~"cats" by stem, "running" unmatched: P = R = 2/3, one chunk of 2: (2/3)(1 - 0.5/8)
    assert meteor_score([["the", "cats", "ran"]], ["the", "cat", "running"], wordnet=wn) == pytest.approx(0.625)
    corpus, per = captions.score(["red scaly plaque", "brown macule"], ["red scaly plaque", "a nodule"])
    assert per["meteor"][0] == pytest.approx(53 / 54) and per["meteor"][1] == 0.0
    assert corpus["bleu1"] == pytest.approx(3 / 5)  # 3 of 5 hypothesis tokens match; no brevity penalty
    assert set(per) >= {"meteor", "rouge1", "rougeL", "cider", "bleu_stats"}


def test_federated_local_training_epoch_cosine_and_normal_init_match_torch():
    """DermINO's FL client: Adam with CosineAnnealingLR(T_max=2, eta_min=1e-6) stepped per epoch, head N(0, .01)."""
    import torch

    from dermbench_plugins.tasks.federated import train as fl_train

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 12)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    w0 = fl_train.init_weights(12, 3, 0, "normal")
    assert abs(float(w0["weight"].std()) - 0.01) < 0.004 and not w0["bias"].any()
    w, _ = fl_train.local_train(w0, x, y, epochs=2, lr=1e-2, batch_size=20, seed=0, server_round=1,
                                schedule="epoch", eta_min=1e-6)
    head = torch.nn.Linear(12, 3).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor(w0["weight"]))
        head.bias.copy_(torch.tensor(w0["bias"]))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2, eta_min=1e-6)
    X, Y = torch.tensor(x).double(), torch.tensor(y)
    order = np.random.default_rng([0, 1])  # the client's shuffling stream for (seed 0, round 1)
    for _ in range(2):
        perm = order.permutation(40)
        for lo in (0, 20):
            idx = torch.tensor(perm[lo : lo + 20])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(X[idx]), Y[idx]).backward()
            opt.step()
        sched.step()  # once per epoch: lr 1e-2 in epoch 1, (1e-2 + 1e-6) / 2 in epoch 2
    np.testing.assert_allclose(w["weight"], head.weight.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(w["bias"], head.bias.detach().numpy(), atol=1e-6)
