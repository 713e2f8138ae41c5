"""CW2V: convex-combination rows, skip-gram training on a structured corpus, determinism,
corpus errors. The corpus is synthetic token ids (the seam tokenizes real text)."""

from __future__ import annotations

import math

import pytest
import torch

from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.methods.base import EstimationProblem, rows_of
from mergekit_tokenplug.methods.cw2v import CW2VParams, cw2v_mixing, estimate_cw2v

N_CLUSTERS, PER_CLUSTER, D = 4, 10, 8
V_OLD = N_CLUSTERS * PER_CLUSTER  # output ids 0..39 are old tokens, 40..43 new


def rows_of_cw2v(problem, params):
    """The kernel's rows (its result also names the rows that fell back)."""
    return rows_of(estimate_cw2v(problem, params))


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(
    seed: int = 0, corpus: list[torch.Tensor] | None = None, **extras
) -> EstimationProblem:
    g = torch.Generator().manual_seed(123)
    centroids = 2.0 * torch.linalg.qr(torch.randn(D, N_CLUSTERS, generator=g))[0].T  # orthogonal
    base = centroids.repeat_interleave(PER_CLUSTER, 0) + 0.2 * torch.randn(V_OLD, D, generator=g)
    if corpus is None:
        corpus = _corpus()
    out_to_base = torch.cat([torch.arange(V_OLD), torch.full((N_CLUSTERS,), -1)])
    out_to_target = torch.cat([torch.full((V_OLD,), -1), torch.arange(N_CLUSTERS)])
    ex = {
        "corpus_ids": corpus,
        "out_to_base": out_to_base,
        "out_to_target": out_to_target,
        "context_matrix": base.clone(),
    }
    ex.update(extras)
    return EstimationProblem(
        base=base,
        anchor_ids=torch.arange(V_OLD),
        n_targets=N_CLUSTERS,
        seed=seed,
        show_progress=False,
        **{k: v for k, v in ex.items() if v is not None},
    )


def _corpus(n_seq: int = 60, length: int = 12) -> list[torch.Tensor]:
    """Each sequence stays inside one cluster; new token 40+c occurs only in cluster c."""
    g = torch.Generator().manual_seed(7)
    seqs = []
    for s in range(n_seq):
        c = s % N_CLUSTERS
        seq = c * PER_CLUSTER + torch.randint(0, PER_CLUSTER, (length,), generator=g)
        seq[torch.randint(0, length, (3,), generator=g)] = V_OLD + c
        seqs.append(seq)
    return seqs


def _params(**kw) -> CW2VParams:
    base = dict(
        corpus=["corpus.txt"], rank=8, epochs=10, window=2, negatives=3, lr=0.1, batch_size=128,
        subsample=0.0,
    )
    base.update(kw)
    return CW2VParams(**base)


def _untrained() -> CW2VParams:
    """The start of training (no epoch): recipes refuse epochs 0, the kernel still has it."""
    return _params().model_copy(update={"epochs": 0})


def _independent_sgns_loss(rows: torch.Tensor, problem: EstimationProblem) -> float:
    """Skip-gram NS loss written out with plain loops and a fixed negative sample."""
    ctx = problem.context_matrix
    counts = torch.zeros(V_OLD)
    for seq in problem.corpus_ids:
        for tok in seq.tolist():
            if tok < V_OLD:
                counts[tok] += 1
    probs = counts**0.75 / (counts**0.75).sum()
    g = torch.Generator().manual_seed(99)
    total, n = 0.0, 0
    for seq in problem.corpus_ids:
        toks = seq.tolist()
        for i, tok in enumerate(toks):
            if tok < V_OLD:
                continue
            centre = rows[tok - V_OLD]
            for j in range(max(0, i - 2), min(len(toks), i + 3)):
                if j == i or toks[j] >= V_OLD:
                    continue
                negs = torch.multinomial(probs, 3, replacement=True, generator=g)
                pos = torch.nn.functional.logsigmoid(centre @ ctx[toks[j]])
                neg = torch.nn.functional.logsigmoid(-(ctx[negs] @ centre)).sum()
                total -= float(pos + neg)
                n += 1
    return total / n


def test_rows_are_convex_combinations_of_old_rows():
    problem = _problem()
    params = _params()
    weights, old_ids = cw2v_mixing(problem, params)
    assert weights.shape == (N_CLUSTERS, V_OLD)
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(N_CLUSTERS), rtol=0, atol=1e-6)
    rows = rows_of_cw2v(problem, params)
    torch.testing.assert_close(rows, weights @ problem.base[old_ids], rtol=1e-5, atol=1e-5)
    # training moved away from the uniform start
    assert float((weights - 1.0 / V_OLD).abs().max()) > 1e-3


def test_untrained_rows_are_exactly_the_mean_row():
    problem = _problem()
    rows = rows_of_cw2v(problem, _untrained())
    expected = problem.base.mean(0).expand(N_CLUSTERS, -1)
    torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-5)


def test_training_lowers_skipgram_loss_and_finds_the_cluster():
    problem = _problem()
    before = rows_of_cw2v(problem, _untrained())
    after = rows_of_cw2v(problem, _params())
    assert _independent_sgns_loss(after, problem) < _independent_sgns_loss(before, problem) - 0.4
    centroids = torch.stack(
        [problem.base[c * PER_CLUSTER : (c + 1) * PER_CLUSTER].mean(0) for c in range(N_CLUSTERS)]
    )
    cos = torch.nn.functional.cosine_similarity(after[:, None, :], centroids[None, :, :], dim=-1)
    assert torch.equal(cos.argmax(-1), torch.arange(N_CLUSTERS))


def test_deterministic_and_seed_param_overrides_problem_seed():
    a = rows_of_cw2v(_problem(seed=1), _params(epochs=2))
    b = rows_of_cw2v(_problem(seed=1), _params(epochs=2))
    assert torch.equal(a, b)
    c = rows_of_cw2v(_problem(seed=2), _params(epochs=2))
    assert not torch.equal(a, c)
    d = rows_of_cw2v(_problem(seed=1), _params(epochs=2, seed=5))
    e = rows_of_cw2v(_problem(seed=2), _params(epochs=2, seed=5))
    assert torch.equal(d, e)


def test_target_absent_from_corpus_stays_at_mean_row():
    corpus = [s for s in _corpus() if (s != V_OLD + 3).all()]
    problem = _problem(corpus=corpus)
    rows = rows_of_cw2v(problem, _params(epochs=3))
    torch.testing.assert_close(rows[3], problem.base.mean(0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(rows[0], problem.base.mean(0), atol=1e-3)


@pytest.mark.parametrize("corpus", [[], [torch.tensor([3])], [torch.tensor([], dtype=torch.long)]])
def test_empty_corpus_is_a_config_error(corpus):
    with pytest.raises(
        ConfigError, match=r"tokenizer\.approximation\.corpus: needs a non-empty text corpus"
    ):
        rows_of_cw2v(_problem(corpus=corpus), _params())


def test_missing_corpus_names_the_key():
    problem = _problem()
    problem.corpus_ids = None
    with pytest.raises(
        ConfigError, match=r"cw2v method needs a corpus.*list of text files or globs"
    ):
        rows_of_cw2v(problem, _params())


def test_params_validation_and_registration():
    from mergekit_tokenplug.methods.base import Need
    from mergekit_tokenplug.registry import get

    spec = get("cw2v")
    assert Need.CORPUS in spec.needs
    with pytest.raises(ConfigError, match="corpus"):
        spec.parse_params({"corpus": []})
    with pytest.raises(ConfigError, match="unknown parameter"):
        spec.parse_params({"corpus": ["a.txt"], "ranks": 4})
    p = spec.parse_params({"corpus": ["*.txt"]})
    assert (p.rank, p.epochs, p.window, p.negatives, p.batch_size) == (64, 5, 5, 5, 4096)
    assert math.isclose(p.lr, 3e-4)


def _joint_loss(w_rows: torch.Tensor, v_rows: torch.Tensor, problem, seqs, window=2) -> float:
    """Skip-gram NS loss of the corpus with new tokens as centres *and* contexts/negatives:
    centres from the input rows (old: base, new: ``w_rows``), contexts and negatives from the
    output rows (old: context_matrix, new: ``v_rows``); fixed negatives, plain loops."""
    w = torch.cat([problem.base, w_rows])
    v = torch.cat([problem.context_matrix, v_rows])
    counts = torch.bincount(torch.cat(seqs), minlength=V_OLD + N_CLUSTERS).double()
    probs = counts**0.75 / (counts**0.75).sum()
    g = torch.Generator().manual_seed(99)
    total, n = 0.0, 0
    for seq in seqs:
        toks = seq.tolist()
        for i, c in enumerate(toks):
            for j in range(max(0, i - window), min(len(toks), i + window + 1)):
                if j == i or (c < V_OLD and toks[j] < V_OLD):
                    continue
                negs = torch.multinomial(probs, 3, replacement=True, generator=g)
                pos = torch.nn.functional.logsigmoid(w[c] @ v[toks[j]])
                neg = torch.nn.functional.logsigmoid(-(v[negs] @ w[c])).sum()
                total -= float(pos + neg)
                n += 1
    return total / n


def test_new_tokens_learn_from_each_other_jointly():
    """New tokens that only ever occur next to other new tokens still learn: they are
    contexts and negatives too, and input and output mixing train together. The result
    differs from the mean row and has a lower skip-gram loss on the corpus than mean init."""
    g = torch.Generator().manual_seed(3)
    seqs = []
    for s in range(80):
        c = (s // 2) % N_CLUSTERS
        if s % 2:  # old tokens of one cluster
            seqs.append(c * PER_CLUSTER + torch.randint(0, PER_CLUSTER, (10,), generator=g))
        else:  # the two new tokens of that cluster (ids 40+c and 40+(c+2)%4), repeated
            a, b = V_OLD + c, V_OLD + (c + 2) % N_CLUSTERS
            seqs.append(torch.tensor([a, b] * 4))
    problem = _problem(corpus=seqs)
    params = _params(epochs=30, seed=11)
    w_rows = rows_of_cw2v(problem, params)
    problem_out = _problem(corpus=seqs)
    problem_out.role = "output"
    v_rows = rows_of_cw2v(problem_out, params)
    mean = problem.base.mean(0).expand(N_CLUSTERS, -1)
    assert float((w_rows - mean).norm(dim=1).min()) > 1e-2
    trained = _joint_loss(w_rows, v_rows, problem, seqs)
    at_mean = _joint_loss(mean, mean, problem, seqs)
    assert trained < at_mean - 0.1, (trained, at_mean)
