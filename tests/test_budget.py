"""The images x classes budget (`compute.max_pairs`), the image budget under autograd
(`compute.max_images`), class texts bucketed by token length, and
the sampled-class softmax of the DiT's classification term: each exact against the plain path
(features, logits, gradients, overfitted prompts), and the budget bounding peak memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pdiff.budget import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PAIRS,
    allocator_peak,
    length_chunks,
    max_images,
    max_pairs,
    stage_params,
)
from pdiff.data.templates import GENERIC_TEMPLATE
from pdiff.errors import PdiffError
from pdiff.methods import Inputs, get_method
from pdiff.methods.text import ClassTexts
from pdiff.overfit import micro_batch, overfit_batch
from pdiff.sampled_softmax import draw_classes, sampled_cross_entropy

# Names of very different token lengths, so that bucketing and padding differ.
CLASSES = ["cat", "red circle", "Mexican hairless dog (xoloitzcuintli)", "blue square",
           "a very long class name of many words indeed", "fox"]
LABELS = torch.tensor([0, 2, 4, 1, 5])
PARAMS = {
    "coop": {"n_ctx": 4, "init": "random"},
    "cocoop": {"n_ctx": 4, "init": "random"},
    "kgcoop": {"n_ctx": 4, "init": "random", "kg_weight": 8.0},
    "maple": {"n_ctx": 2, "init": "a photo of a", "depth": 2},
    "promptsrc": {"n_ctx": 4, "init": "a photo of a", "depth": 2, "n_ctx_vision": 2},
}
TEXTUAL = sorted(PARAMS)


@pytest.fixture
def budget(backbone):
    """A copy of the shared backbone whose budget a test may change."""
    return dataclasses.replace(backbone)


@pytest.fixture(scope="module")
def inputs(backbone):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 32, 32, generator=g)
    return Inputs(backbone.encode_images(images), images)


def make(backbone, name):
    return get_method(name)(backbone, CLASSES, GENERIC_TEMPLATE, PARAMS[name])


def per_sample(method, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: v.expand(b, *v.shape[1:]) + 0.05 * torch.randn(b, *v.shape[1:], generator=g)
            for k, v in method.init_prompt().items()}


def peak_bytes(fn) -> int:
    """Allocator peak of `fn` above its start (the torch profiler's memory events)."""
    return allocator_peak(fn)[1]


def test_max_pairs_comes_from_the_compute_params():
    assert max_pairs({}) == max_pairs({"steps": 3}) == DEFAULT_MAX_PAIRS
    assert max_pairs({"compute": {"max_pairs": 7}}) == 7
    assert stage_params({"steps": 3, "compute": {"max_pairs": 7}}) == {"steps": 3}
    for bad in (0, -1, 2.5, "8", True):
        with pytest.raises(PdiffError, match="compute.max_pairs"):
            max_pairs({"compute": {"max_pairs": bad}})


def test_max_images_comes_from_the_compute_params():
    assert max_images({}) == max_images({"compute": {"max_pairs": 7}}) == DEFAULT_MAX_IMAGES
    assert max_images({"compute": {"max_images": 2}}) == 2
    for bad in (0, -3, 1.5, "4", False):
        with pytest.raises(PdiffError, match=r"compute\.max_images must be a positive integer"):
            max_images({"compute": {"max_images": bad}})


def test_length_chunks_group_equal_lengths_within_the_limit():
    lengths = torch.tensor([3, 5, 3, 3, 5, 4, 3])
    chunks = [(n, idx.tolist()) for n, idx in length_chunks(lengths, 2)]
    assert chunks == [(3, [0, 2]), (3, [3, 6]), (4, [5]), (5, [1, 4])]


def test_class_texts_are_cut_after_their_own_end_of_text(backbone):
    texts = make(backbone, "coop").texts
    lengths = (texts.eot + 1).tolist()
    assert len(set(lengths)) > 2 and texts.suffix.shape[1] == max(lengths) - texts.n_prefix


@pytest.mark.parametrize("share_prefix", [True, False], ids=["shared-prefix", "plain"])
@pytest.mark.parametrize("name", TEXTUAL)
def test_bucketed_class_texts_equal_padded_ones(backbone, inputs, name, share_prefix,
                                                monkeypatch):
    m = make(backbone, name)
    prompts = per_sample(m, len(inputs))
    monkeypatch.setattr(ClassTexts, "share_prefix", share_prefix)
    bucketed = m.logits(inputs, prompts)
    monkeypatch.setattr(ClassTexts, "bucket", False)
    torch.testing.assert_close(bucketed, m.logits(inputs, prompts), atol=1e-4, rtol=1e-5)


def test_zero_shot_texts_bucketed_equal_one_at_a_time(backbone):
    texts = [f"a photo of a {c}." for c in CLASSES]
    together = backbone.encode_texts(texts)
    alone = torch.cat([backbone.encode_texts([t]) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TEXTUAL)
def test_chunked_encoding_equals_unchunked_with_gradients(budget, inputs, name):
    """Over the budget, under autograd the chunks are checkpointed: features, logits and the
    gradients of per-sample prompts and shared parameters equal one unchunked pass."""
    m = make(budget, name)
    prompts = {k: v.requires_grad_(True) for k, v in per_sample(m, len(inputs)).items()}

    def run(limit):
        budget.max_pairs = limit
        m.zero_grad(set_to_none=True)
        for v in prompts.values():
            v.grad = None
        loss = m.per_sample_loss(inputs, LABELS, prompts)
        loss.sum().backward()
        shared = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
        return loss.detach(), {k: v.grad.clone() for k, v in prompts.items()}, shared

    whole, chunked = run(10**6), run(4)  # 5 x 6 pairs in chunks of at most 4
    torch.testing.assert_close(chunked[0], whole[0], atol=1e-5, rtol=1e-5)
    for a, b in ((chunked[1], whole[1]), (chunked[2], whole[2])):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=5e-6, rtol=1e-4)


def test_cocoop_meta_net_paths_chunk_exactly(budget, inputs):
    """CoCoOp's per-image class texts (baseline logits and training loss) under the budget."""
    m = make(budget, "cocoop")

    def run(limit):
        budget.max_pairs = limit
        m.zero_grad(set_to_none=True)
        m.loss(inputs, LABELS).backward()
        with torch.no_grad():
            logits = m.logits(inputs)
        return logits, [p.grad.clone() for p in m.parameters()]

    (l1, g1), (l2, g2) = run(10**6), run(3)
    torch.testing.assert_close(l2, l1, atol=1e-5, rtol=1e-5)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("limit", [12, 4], ids=["micro-batches", "checkpointed-classes"])
@pytest.mark.parametrize("name", ["coop", "kgcoop", "maple"])
def test_overfitting_under_the_budget_equals_one_pass(budget, inputs, name, limit):
    """12 pairs: micro-batches of two samples; 4 (fewer than one sample's 6 classes): one
    sample at a time with its class chunks checkpointed. Both give the unbudgeted prompts."""
    m = make(budget, name)
    m.requires_grad_(False)
    budget.max_pairs = 10**6
    ref = overfit_batch(m, inputs, LABELS, steps=3, lr=0.05)
    budget.max_pairs = limit
    assert micro_batch(m, len(inputs)) == max(1, limit // len(CLASSES))
    got = overfit_batch(m, inputs, LABELS, steps=3, lr=0.05)
    for k in ref[0]:
        torch.testing.assert_close(got[0][k], ref[0][k], atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[2], ref[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vpt", "maple", "promptsrc"])
def test_overfitting_under_the_image_budget_equals_one_pass(budget, inputs, name):
    """Prompts entering the image tower: micro-batches of at most `max_images` samples (here
    2 of 5: parts of 2, 2 and 1) give the prompts and losses of one pass over the batch."""
    m = (get_method("vpt")(budget, CLASSES, GENERIC_TEMPLATE, {"n_ctx": 2, "depth": 2})
         if name == "vpt" else make(budget, name))
    m.requires_grad_(False)
    budget.max_pairs, budget.max_images = 10**6, 10**6
    assert micro_batch(m, len(inputs)) == len(inputs)
    ref = overfit_batch(m, inputs, LABELS, steps=3, lr=0.05)
    budget.max_images = 2
    assert micro_batch(m, len(inputs)) == 2
    budget.max_pairs = len(CLASSES)  # the pair budget, tighter still, wins: one sample
    assert micro_batch(m, len(inputs)) == (2 if name == "vpt" else 1)
    budget.max_pairs = 10**6
    got = overfit_batch(m, inputs, LABELS, steps=3, lr=0.05)
    for k in ref[0]:
        torch.testing.assert_close(got[0][k], ref[0][k], atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[2], ref[2], atol=1e-5, rtol=1e-5)


def test_the_image_budget_leaves_frozen_feature_methods_alone(budget):
    """CoOp reads cached features: no image runs under autograd, only the pair budget counts."""
    m = make(budget, "coop")
    budget.max_pairs, budget.max_images = 10**6, 1
    assert micro_batch(m, 5) == 5


def test_the_budget_bounds_peak_memory(budget, inputs):
    """Per-sample prompts over many classes: the allocator's peak (torch profiler) falls with
    the budget, in evaluation (chunks of pairs) and in overfitting (micro-batches)."""
    names = [f"{c} {i}" for i in range(40) for c in CLASSES[:3]]  # 120 classes, 600 pairs
    m = get_method("coop")(budget, names, GENERIC_TEMPLATE, PARAMS["coop"])
    m.requires_grad_(False)
    prompts = per_sample(m, len(inputs))
    labels = LABELS % len(names)

    def evaluation(limit):
        budget.max_pairs = limit
        with torch.no_grad():
            return peak_bytes(lambda: m.logits(inputs, prompts))

    def overfitting(limit):
        budget.max_pairs = limit
        return peak_bytes(lambda: overfit_batch(m, inputs, labels, steps=1, lr=0.01))

    assert evaluation(40) < 0.5 * evaluation(10**6)
    assert overfitting(len(names)) < 0.5 * overfitting(10**6)  # one sample at a time


@pytest.mark.parametrize("name", ["coop", "cocoop", "maple", "vpt", "zeroshot"])
def test_logits_of_chosen_classes_are_those_of_the_full_table(backbone, inputs, name):
    params = {"n_ctx": 2, "depth": 1} if name == "vpt" else {}  # zero-shot CLIP has no keys
    m = (get_method(name)(backbone, CLASSES, GENERIC_TEMPLATE, params)
         if name in ("vpt", "zeroshot") else make(backbone, name))
    prompts = per_sample(m, len(inputs)) if m.prompt else {}
    classes = torch.tensor([[0, 2], [5, 1], [3, 3], [4, 0], [1, 5]])
    full = m.logits(inputs, prompts)
    torch.testing.assert_close(m.logits(inputs, prompts, classes), full.gather(1, classes),
                               atol=1e-4, rtol=1e-5)


def test_drawn_classes_put_the_label_first_then_distinct_others_seeded():
    labels = torch.tensor([3, 0, 9, 3])
    a = draw_classes(labels, 10, 5, torch.Generator().manual_seed(0))
    b = draw_classes(labels, 10, 5, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (4, 6)
    assert torch.equal(a[:, 0], labels)
    for row, label in zip(a.tolist(), labels.tolist(), strict=True):
        assert len(set(row)) == 6 and label not in row[1:]
    assert not torch.equal(a, draw_classes(labels, 10, 5, torch.Generator().manual_seed(1)))


def test_sampled_cross_entropy_estimates_the_full_one():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(3, 50, generator=g), torch.tensor([4, 0, 49])
    full = F.cross_entropy(logits, labels, reduction="none")
    every = draw_classes(labels, 50, 49, g)  # all other classes: exactly the full loss
    torch.testing.assert_close(sampled_cross_entropy(logits.gather(1, every), 50), full)
    # with 10 of 49 negatives the weighted denominator is unbiased: its mean over draws is the
    # full one (the loss itself, a log of it, sits slightly below on average)
    draws = [draw_classes(labels, 50, 10, g) for _ in range(4000)]
    ratios = torch.stack([(sampled_cross_entropy(logits.gather(1, c), 50) - full).exp()
                          for c in draws])  # sampled / full denominator
    torch.testing.assert_close(ratios.mean(0), torch.ones(3), atol=0.02, rtol=0)
