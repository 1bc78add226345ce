"""Every host method behind one interface: shapes, frozen backbone, batching, zero-shot limits,
checkpoints and new classes, each asserted for every registered method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pdiff.checkpoint import load_prompt, save_prompt
from pdiff.data.templates import GENERIC_TEMPLATE
from pdiff.host_prompt import fit_prompt
from pdiff.methods import METHODS, Inputs, get_method
from pdiff.methods.packing import PromptLayout
from pdiff.methods.text import ClassTexts
from pdiff.overfit import overfit_batch, zeroshot_anchor

CLASSES = ["red circle", "blue square", "green triangle"]
LABELS = torch.tensor([0, 1, 2, 0, 1])

# Small but complete settings of each method (deep methods use 2 of the tiny model's 4 layers).
PARAMS = {
    "coop": {"n_ctx": 4, "init": "random"},
    "cocoop": {"n_ctx": 4, "init": "random"},
    "kgcoop": {"n_ctx": 4, "init": "random", "kg_weight": 8.0},
    "vpt": {"n_ctx": 2, "depth": 2},
    "maple": {"n_ctx": 2, "init": "a photo of a", "depth": 2},
    "promptsrc": {"n_ctx": 4, "init": "a photo of a", "depth": 2, "n_ctx_vision": 2},
}
# Settings under which each method *is* zero-shot CLIP with "a photo of a {}.".
ZERO_SHOT = {
    "coop": {"init": "a photo of a"},
    "cocoop": {"init": "a photo of a"},  # plus a zero meta-net output, set in the test
    "kgcoop": {"init": "a photo of a"},
    "vpt": {"n_ctx": 2, "depth": 0},
    "maple": {"init": "a photo of a", "depth": 0},
    "promptsrc": {"init": "a photo of a", "depth": 0},
}
LEARNED = sorted(PARAMS)


def test_every_registered_method_is_tested():
    assert set(METHODS) == {"zeroshot", *LEARNED}


def make(backbone, name, params=None, classes=CLASSES):
    return get_method(name)(backbone, classes, GENERIC_TEMPLATE,
                           PARAMS[name] if params is None else params)


@pytest.fixture(scope="module")
def inputs(backbone):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 32, 32, generator=g)
    return Inputs(backbone.encode_images(images), images)


class InMemory:
    """The batches interface of pdiff.inputs.ImageList over tensors already in memory."""

    def __init__(self, inputs: Inputs, labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, needs_images, order=None, batch_size=None, augment=None, draw=0):
        order = torch.arange(len(self)) if order is None else torch.as_tensor(order)
        for idx in order.split(batch_size or len(self)):
            yield self.inputs[idx], self.labels[idx], idx


def random_prompts(method, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: v.expand(b, *v.shape[1:]) + 0.05 * torch.randn(b, *v.shape[1:], generator=g)
            for k, v in method.init_prompt().items()}


@pytest.mark.parametrize("name", LEARNED)
def test_logits_shape_shared_and_per_sample(backbone, inputs, name):
    m = make(backbone, name)
    assert m.logits(inputs).shape == (5, 3)
    per = {k: v.expand(5, *v.shape[1:]) for k, v in m.init_prompt().items()}
    torch.testing.assert_close(m.logits(inputs, per), m.logits(inputs), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", LEARNED)
def test_gradients_reach_only_the_prompt_and_shared_parameters(backbone, inputs, name):
    m = make(backbone, name)
    m.loss(inputs, LABELS).backward()
    for key, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{key} got no gradient"
    assert all(p.grad is None for p in backbone.model.parameters()), "backbone must stay frozen"
    assert {k for k in m.learnable_state()} == {k for k, _ in m.named_parameters()}


@pytest.mark.parametrize("name", LEARNED)
def test_per_sample_prompts_batched_equal_one_at_a_time(backbone, inputs, name):
    m = make(backbone, name)
    prompts = random_prompts(m, 5)
    batched = m.logits(inputs, prompts)
    single = torch.cat([m.logits(inputs[i : i + 1], {k: v[i : i + 1] for k, v in prompts.items()})
                        for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched, m.logits(inputs), atol=1e-3), "prompts must matter"


@pytest.mark.parametrize("name", LEARNED)
def test_template_prompt_or_depth_zero_reproduces_zero_shot(backbone, inputs, name):
    m = make(backbone, name, ZERO_SHOT[name])
    if name == "cocoop":
        torch.nn.init.zeros_(m.meta_net[2].weight)
        torch.nn.init.zeros_(m.meta_net[2].bias)
    zs = make(backbone, "zeroshot", {})
    torch.testing.assert_close(m.logits(inputs), zs.logits(inputs), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", LEARNED)
def test_checkpoint_round_trip_gives_identical_logits(backbone, inputs, tmp_path, name):
    m = make(backbone, name)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)
    save_prompt(tmp_path / "p.safetensors", m, {"classes": "base", "classnames": CLASSES})
    loaded, meta = load_prompt(tmp_path / "p.safetensors", backbone)
    assert meta["method"] == name and meta["backbone"] == backbone.identity
    torch.testing.assert_close(loaded.logits(inputs), m.logits(inputs), atol=0, rtol=0)


@pytest.mark.parametrize("name", LEARNED)
def test_new_class_names_rebuild_the_prompts(backbone, inputs, tmp_path, name):
    m = make(backbone, name)
    save_prompt(tmp_path / "p.safetensors", m, {"classes": "base", "classnames": CLASSES})
    new = ["pink star", "cyan ring"]
    loaded, _ = load_prompt(tmp_path / "p.safetensors", backbone, new)
    assert loaded.logits(inputs).shape == (5, 2)
    fresh = make(backbone, name, classes=CLASSES[:1] + new)  # same prompt, other class table
    torch.testing.assert_close(loaded.logits(inputs), fresh.logits(inputs)[:, 1:],
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", LEARNED)
def test_batched_overfitting_equals_one_at_a_time(backbone, inputs, name):
    m = make(backbone, name)
    m.requires_grad_(False)
    batched, before, after = overfit_batch(m, inputs[:3], LABELS[:3], steps=3, lr=0.05)
    for i in range(3):
        single, b1, _ = overfit_batch(m, inputs[i : i + 1], LABELS[i : i + 1], steps=3, lr=0.05)
        for k in single:
            torch.testing.assert_close(batched[k][i : i + 1], single[k], atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(before[i : i + 1], b1, atol=1e-5, rtol=1e-4)
    assert (after < before).all(), "overfitting must lower each sample's own loss"


@pytest.mark.parametrize("name", LEARNED)
def test_zeroshot_anchor_adds_kl_to_zeroshot_clip_to_each_samples_loss(backbone, inputs, name):
    """overfit.kl_weight: every method's per-sample loss gains weight * KL(zero-shot CLIP ||
    prompted) of that sample, and overfitting under it ends nearer zero-shot CLIP's prediction."""
    m = make(backbone, name)
    m.requires_grad_(False)
    assert zeroshot_anchor(m, 0.0)(m.condition(inputs)) is None
    anchor = zeroshot_anchor(m, 2.0)(m.condition(inputs))
    zeroshot = make(backbone, "zeroshot", {}).logits(inputs).log_softmax(-1)
    torch.testing.assert_close(anchor.log_probs, zeroshot, atol=1e-5, rtol=1e-5)

    def kl(prompts):
        return (zeroshot.exp() * (zeroshot - m.logits(inputs, prompts).log_softmax(-1))).sum(-1)

    prompts = random_prompts(m, len(inputs))
    extra = (m.per_sample_loss(inputs, LABELS, prompts, anchor)
             - m.per_sample_loss(inputs, LABELS, prompts))
    torch.testing.assert_close(extra, 2.0 * kl(prompts), atol=1e-4, rtol=1e-4)

    free, _, _ = overfit_batch(m, inputs, LABELS, steps=5, lr=0.05)
    tied, _, _ = overfit_batch(m, inputs, LABELS, steps=5, lr=0.05,
                               anchor=zeroshot_anchor(m, 50.0)(m.condition(inputs)))
    assert kl(tied).mean() < kl(free).mean()


@pytest.mark.parametrize("name", ["coop", "cocoop", "maple", "promptsrc"])
def test_shared_prefix_encoding_equals_full_sequences(backbone, inputs, name, monkeypatch):
    """The fast path (context encoded once per prompt) gives the plain path's logits."""
    m = make(backbone, name)
    prompts = random_prompts(m, 5)
    fast = m.logits(inputs, prompts)
    monkeypatch.setattr(ClassTexts, "share_prefix", False)
    torch.testing.assert_close(fast, m.logits(inputs, prompts), atol=1e-4, rtol=1e-5)


def test_promptsrc_keeps_the_gaussian_average_of_its_epochs(backbone, inputs):
    m = make(backbone, "promptsrc", {**PARAMS["promptsrc"], "gpa_mean": 2, "gpa_std": 0.01})
    snapshots = []
    m.on_epoch_end = (lambda orig: lambda e, n: (snapshots.append(
        {k: v.detach().clone() for k, v in m.prompt.items()}), orig(e, n)))(m.on_epoch_end)
    cfg = {"optimizer": "adam", "lr": 0.01, "batch_size": 5, "epochs": 3}
    fit_prompt(m, InMemory(inputs, LABELS), cfg, torch.Generator().manual_seed(0))
    # std -> 0 puts all weight on epoch 2 (1-based): the kept prompt is that epoch's
    for k, v in m.prompt.items():
        torch.testing.assert_close(v.detach(), snapshots[1][k])
        assert not torch.allclose(v.detach(), snapshots[2][k])


@pytest.mark.parametrize("name", ["promptsrc", "kgcoop"])
def test_regularised_methods_overfit_with_their_own_loss(backbone, inputs, name):
    """Per-sample overfitting keeps the host's regularisers (PromptSRC's self-regularisation,
    KgCoOp's knowledge guidance): with one prompt shared by every sample the per-sample losses
    average to the training loss, and each sample's loss depends on its own prompt alone."""
    m = make(backbone, name)
    labels = LABELS[: len(inputs)]
    shared = {k: v.expand(len(inputs), *v.shape[1:]) for k, v in m.learned_prompts().items()}
    per_sample = m.per_sample_loss(inputs, labels, shared)
    torch.testing.assert_close(per_sample.mean(), m.loss(inputs, labels), atol=1e-5, rtol=1e-5)
    ce = F.cross_entropy(m.logits(inputs, shared), labels, reduction="none")
    assert (per_sample > ce + 1e-4).all(), "the regularisers must be part of the objective"
    own = random_prompts(m, len(inputs))
    moved = {k: v.clone() for k, v in own.items()}
    for v in moved.values():
        v[0] += 0.1
    changed = m.per_sample_loss(inputs, labels, moved) != m.per_sample_loss(inputs, labels, own)
    assert changed.tolist() == [True] + [False] * (len(inputs) - 1)


def test_packing_round_trip_with_mixed_widths():
    layout = PromptLayout.from_spec({"text": (4, 8), "vision": (2, 3, 12)})
    assert (layout.num_tokens, layout.token_dim) == (10, 12)
    g = torch.Generator().manual_seed(0)
    prompts = {"text": torch.randn(3, 4, 8, generator=g),
               "vision": torch.randn(3, 2, 3, 12, generator=g)}
    packed = layout.pack(prompts)
    assert packed.shape == (3, 10, 12)
    assert (packed[:, ~layout.mask()] == 0).all()
    out = layout.unpack(packed)
    for k in prompts:
        assert torch.equal(out[k], prompts[k])


def test_unknown_method_names_the_choices():
    with pytest.raises(Exception, match="unknown method 'coopp'.*available: cocoop, coop"):
        get_method("coopp")
