"""Objectives: names, values and logit gradients against closed forms, token selection, numerics, chunking."""

import math

import pytest
import torch

from alphasweep.objectives import (
    ALPHA_RANGE,
    CUT_RANGE,
    FAMILIES,
    SPECS,
    Objective,
    objective_from_params,
    objective_loss,
    objective_loss_with_stats,
    parse_objective,
    target_log_prob,
)
from alphasweep.plots import plot_weights

VOCAB = 8
ONE_OF_EACH = [
    "original", "p", "dft", "GeneralFamily-0.5", "GeneralFamily--1", "GeneralFamily-8",
    "OnlyTopP-0.4", "OnlyBottomP-0.4", "OnlyTopLogP-0.4", "OnlyBottomLogP-0.4",
    "TopQuantileP-0.3", "BottomQuantileP-0.3", "TopQuantileLogP-0.7", "BottomQuantileLogP-0.7",
]  # fmt: skip
PS = [0.02, 0.1, 0.3, 0.45, 0.6, 0.8, 0.97]


def logits_with_target_p(ps, vocab=VOCAB):
    """Logits [n, vocab] whose softmax gives label 0 the probability ps[i]; labels [n] (all 0)."""
    p = torch.tensor(ps, dtype=torch.float64)
    rest = torch.log(torch.clamp(1 - p, min=1e-40) / (vocab - 1))
    logits = torch.cat([p.log()[:, None], rest[:, None].expand(-1, vocab - 1)], 1).float()
    return logits, torch.zeros(len(ps), dtype=torch.long)


def closed_form_loss(objective, p):
    """f(p) straight from the paper's definitions, in float64."""
    a, kind = objective.alpha, objective.family
    if kind == "general":
        return (1 - p**a) / a
    if kind == "dft":
        return -p * math.log(p)
    return -math.log(p) if kind.endswith("logp") or kind == "nll" else 1 - p


def expected_selection(objective, p):
    """Which tokens (probabilities p, a float tensor) the objective trains on."""
    family = objective.family
    if family in ("nll", "p", "dft", "general"):
        return torch.ones_like(p, dtype=torch.bool)
    cut = torch.quantile(p, objective.threshold) if "quantile" in family else objective.threshold
    return p >= cut if family.startswith("top") else p < cut


@pytest.mark.parametrize("name", ONE_OF_EACH)
def test_value_and_logit_gradient_match_closed_forms(name):
    objective = parse_objective(name)
    logits, labels = logits_with_target_p(PS)
    logits.requires_grad_()
    loss = objective_loss(logits, labels, torch.ones(len(PS), dtype=torch.bool), objective)
    loss.backward()

    p = torch.softmax(logits.detach().double(), -1)[:, 0]
    selected = expected_selection(objective, p)
    n = int(selected.sum())
    assert 0 < n < len(PS) or not objective.threshold
    expected = sum(closed_form_loss(objective, float(pi)) for pi in p[selected]) / n
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # dL/dlogits = -W(p) (onehot - softmax) / n_selected, and 0 for tokens left out.
    onehot = torch.nn.functional.one_hot(labels, VOCAB).double()
    weight = objective.weight(p) * selected
    expected_grad = -weight[:, None] * (onehot - torch.softmax(logits.detach().double(), -1)) / n
    torch.testing.assert_close(logits.grad.double(), expected_grad, atol=1e-6, rtol=1e-5)


def test_general_family_limits():
    torch.manual_seed(0)
    logits = torch.randn(4, 9, 50)
    labels = torch.randint(0, 50, (4, 9))
    mask = torch.rand(4, 9) > 0.2
    nll = objective_loss(logits, labels, mask, parse_objective("original"))
    near_zero = objective_loss(logits, labels, mask, parse_objective("GeneralFamily-1e-4"))
    assert near_zero.item() == pytest.approx(nll.item(), rel=1e-3)  # f_a = -log p - a (log p)^2 / 2 + ...
    assert objective_loss(logits, labels, mask, parse_objective("GeneralFamily-1")).item() == pytest.approx(
        objective_loss(logits, labels, mask, parse_objective("p")).item(), rel=1e-6
    )


def test_bf16_logits_give_float32_loss_and_bf16_gradient():
    logits, labels = logits_with_target_p(PS)
    for name in ("original", "GeneralFamily-2", "TopQuantileP-0.5"):
        reference = objective_loss(logits, labels, torch.ones(len(PS)), parse_objective(name))
        leaf = logits.bfloat16().requires_grad_()
        loss = objective_loss(leaf, labels, torch.ones(len(PS)), parse_objective(name))
        loss.backward()
        assert loss.dtype == torch.float32 and leaf.grad.dtype == torch.bfloat16
        assert loss.item() == pytest.approx(reference.item(), rel=2e-2)


def test_fixed_cuts_select_tokens_and_partition():
    logits, labels = logits_with_target_p(PS)
    mask = torch.ones(len(PS), dtype=torch.bool)
    for side, expected in (("Top", [p >= 0.4 for p in PS]), ("Bottom", [p < 0.4 for p in PS])):
        for loss_kind in ("P", "LogP"):
            leaf = logits.clone().requires_grad_()
            loss, stats = objective_loss_with_stats(leaf, labels, mask, parse_objective(f"Only{side}{loss_kind}-0.4"))
            loss.backward()
            assert (leaf.grad.abs().sum(1) > 0).tolist() == expected
            assert stats["selected_share"] == pytest.approx(sum(expected) / len(PS))


def test_quantile_cut_is_the_quantile_of_masked_tokens():
    ps = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    logits, labels = logits_with_target_p(ps + [0.99, 0.01])
    mask = torch.tensor([True] * 9 + [False, False])  # masked-off tokens must not move the cut
    for r, top in ((0.5, 5), (0.25, 7), (0.3, 6)):
        for name, expected in ((f"TopQuantileP-{r}", top), (f"BottomQuantileLogP-{r}", 9 - top)):
            leaf = logits.clone().requires_grad_()
            loss, stats = objective_loss_with_stats(leaf, labels, mask, parse_objective(name))
            loss.backward()
            chosen = leaf.grad.abs().sum(1) > 0
            assert int(chosen.sum()) == expected, name
            assert not chosen[9:].any()
            assert stats["selected_share"] == pytest.approx(expected / 9)


def test_stats():
    logits, labels = logits_with_target_p([0.2, 0.4, 0.9])
    _, stats = objective_loss_with_stats(logits, labels, torch.tensor([1, 1, 0]), parse_objective("OnlyTopP-0.3"))
    assert stats == pytest.approx({"selected": 1.0, "selected_share": 0.5, "mean_p": 0.3, "tokens": 2.0})


def test_sum_reduction_is_the_mean_times_the_selected_tokens():
    """`reduction="sum"` is what a caller dividing by a whole global batch's selected tokens needs."""
    logits, labels = logits_with_target_p(PS)
    mask = torch.ones(len(PS), dtype=torch.bool)
    for name in ("original", "GeneralFamily-2", "OnlyTopP-0.4", "TopQuantileP-0.5"):
        mean, stats = objective_loss_with_stats(logits, labels, mask, parse_objective(name))
        total, summed_stats = objective_loss_with_stats(logits, labels, mask, parse_objective(name), reduction="sum")
        assert summed_stats == stats and 0 < stats["selected"] <= len(PS)
        assert total.item() == pytest.approx(mean.item() * stats["selected"], rel=1e-5), name


@pytest.mark.parametrize("name", ONE_OF_EACH + ["GeneralFamily-16", "GeneralFamily-1e-8", "GeneralFamily--1e-8"])
def test_finite_for_tiny_and_certain_tokens(name):
    ps = [1e-30, 1e-20, 1e-10, 1e-4, 0.5, 1 - 1e-6, 1.0]
    logits, labels = logits_with_target_p(ps)
    logits.requires_grad_()
    loss = objective_loss(logits, labels, torch.ones(len(ps), dtype=torch.bool), parse_objective(name))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ONE_OF_EACH)
def test_nothing_selected_gives_zero_loss_and_gradient(name):
    logits = torch.randn(2, 5, VOCAB, requires_grad=True)
    labels = torch.full((2, 5), -100)
    loss, stats = objective_loss_with_stats(logits, labels, torch.zeros(2, 5, dtype=torch.bool), parse_objective(name))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None and not logits.grad.any()
    assert stats == {"selected": 0.0, "selected_share": 0.0, "mean_p": 0.0, "tokens": 0.0}
    # A cut that keeps nothing (all p above a bottom cut) behaves the same.
    logits, labels = logits_with_target_p([0.8, 0.9])
    logits.requires_grad_()
    loss = objective_loss(logits, labels, torch.ones(2), parse_objective("OnlyBottomP-0.5"))
    loss.backward()
    assert loss.item() == 0.0 and not logits.grad.any()


GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize(
    ("device", "dtype"),
    [
        ("cpu", torch.float32),
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.float32, marks=GPU),
        pytest.param("cuda", torch.bfloat16, marks=GPU),
    ],
)
def test_chunked_target_log_prob_matches_naive(device, dtype):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 37, 101)).to(device, dtype).requires_grad_()
    labels = torch.randint(0, 101, (3, 37), dtype=torch.int32, device=device)
    mask = torch.rand(3, 37, device=device) > 0.3
    labels[~mask] = -100
    logp = target_log_prob(logits, labels, mask, chunk_elements=4 * 101 + 7)  # 4 rows a chunk, ragged tail
    naive = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).long()[..., None])[..., 0][mask]
    torch.testing.assert_close(logp, naive, atol=1e-5, rtol=0)  # bf16 too: both use float32 from the same values
    upstream = torch.randn_like(logp)
    (grad,) = torch.autograd.grad(logp, logits, upstream)
    (naive_grad,) = torch.autograd.grad(naive, logits, upstream)
    assert grad.dtype == dtype
    # bf16: both round a float32 gradient to bf16, computed in different order; allow a rounding step.
    torch.testing.assert_close(grad.float(), naive_grad.float(), atol=1e-5, rtol=0 if dtype == torch.float32 else 1e-2)


def test_names_round_trip_for_every_family():
    alphas, cuts = [-1.0, -0.25, 1e-4, 0.5, 1.0, 16.0, 1 / 3], [1e-6, 0.1, 0.5, 2 / 3]
    for family in FAMILIES:
        for value in alphas if family == "general" else [None] if family in ("nll", "p", "dft") else cuts:
            objective = objective_from_params(family, alpha=value, threshold=value)
            assert objective.family == family
            assert parse_objective(objective.name) == objective
            assert set(objective.params()) == {"family", "alpha", "threshold"}
    assert parse_objective("logp") == parse_objective("nll") == parse_objective("original") == Objective("nll")
    assert parse_objective("GeneralFamily-1e-04").name == "GeneralFamily-0.0001"
    assert parse_objective("GeneralFamily-1").name == "GeneralFamily-1"
    assert parse_objective("GeneralFamily--0.5").alpha == -0.5
    assert parse_objective("TopQuantileLogP-0.25") == Objective("top_quantile_logp", threshold=0.25)


@pytest.mark.parametrize(
    "name",
    ["foo", "GeneralFamily", "GeneralFamily-", "GeneralFamily-x", "GeneralFamily-0", "GeneralFamily-16.5",
     "GeneralFamily--1.5", "GeneralFamily-nan", "OnlyTopP-0", "OnlyTopP-1", "TopQuantileP-1.5", "p-0.5"],
)  # fmt: skip
def test_bad_names_raise_listing_accepted_names(name):
    with pytest.raises(ValueError, match="accepted names: original, nll, logp, p, dft, GeneralFamily-<alpha>"):
        parse_objective(name)


def test_bad_params_raise():
    with pytest.raises(ValueError, match="accepted families: nll, p, dft, general"):
        objective_from_params("gaussian")
    with pytest.raises(ValueError, match="needs alpha"):
        objective_from_params("general")
    with pytest.raises(ValueError, match="needs threshold"):
        Objective("top_p")
    with pytest.raises(ValueError, match="takes no alpha"):
        Objective("nll", alpha=0.5)


def test_weight_accepts_floats_and_tensors():
    general = parse_objective("GeneralFamily-2")
    assert general.weight(0.5) == 0.25
    torch.testing.assert_close(general.weight(torch.tensor([0.5, 1.0])), torch.tensor([0.25, 1.0]))
    assert parse_objective("original").weight(0.3) == 1.0
    assert parse_objective("OnlyTopLogP-0.5").weight(0.3) == 0.0
    assert parse_objective("OnlyBottomP-0.5").weight(0.3) == pytest.approx(0.3)
    assert parse_objective("OnlyTopP-0.5").weight(0.5) == 0.5  # Top keeps p >= q,
    assert parse_objective("OnlyBottomP-0.5").weight(0.5) == 0.0  # Bottom keeps p < q.
    assert parse_objective("TopQuantileP-0.5").weight(0.3) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("name", "param", "axis"),
    [("original", None, 0.0), ("p", None, 1.0), ("dft", None, 1.0), ("GeneralFamily--0.5", "alpha", -0.5),
     ("GeneralFamily-4", "alpha", 4.0), ("OnlyTopP-0.2", "threshold", 1.0), ("OnlyBottomP-0.2", "threshold", 1.0),
     ("OnlyTopLogP-0.2", "threshold", 0.0), ("OnlyBottomLogP-0.2", "threshold", 0.0),
     ("TopQuantileP-0.2", "quantile", 1.0), ("BottomQuantileP-0.2", "quantile", 1.0),
     ("TopQuantileLogP-0.2", "quantile", 0.0), ("BottomQuantileLogP-0.2", "quantile", 0.0)],
)  # fmt: skip
def test_registry_says_each_familys_parameter_range_and_place_on_the_alpha_axis(name, param, axis):
    objective = parse_objective(name)
    spec = SPECS[objective.family]
    assert spec.param == param and objective.effective_alpha == axis
    assert spec.range == {None: None, "alpha": ALPHA_RANGE}.get(param, CUT_RANGE)
    kept = 0.1 if "Bottom" in name else 0.9  # a token any cut of 0.2 keeps: W(p) = p^(its place on the axis)
    assert objective.weight(kept) == pytest.approx(kept**axis)
    assert set(SPECS) == set(FAMILIES)


def test_ranges_contain_their_ends_as_documented():
    assert -1.0 in ALPHA_RANGE and 16.0 in ALPHA_RANGE and 16.5 not in ALPHA_RANGE
    assert 0.0 not in CUT_RANGE and 1.0 not in CUT_RANGE and 0.5 in CUT_RANGE
    assert (str(ALPHA_RANGE), str(CUT_RANGE)) == ("[-1, 16]", "(0, 1)")


def test_plot_weights_writes_png(tmp_path):
    path = plot_weights(["original", "p", parse_objective("GeneralFamily--0.5"), "OnlyTopP-0.3"], tmp_path / "w.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
