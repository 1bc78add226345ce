"""The method interface: CoOp and zero-shot behind one `logits`, packing, checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdiff.checkpoint import load_prompt, save_prompt
from pdiff.data.templates import format_prompt
from pdiff.methods import Inputs, get_method
from pdiff.methods.packing import PromptLayout
from pdiff.overfit import overfit_batch

CLASSES = ["red circle", "blue square", "green triangle"]


def _coop(backbone, **kw):
    params = {"n_ctx": 4, "init": "random", **kw}
    return get_method("coop")(backbone, CLASSES, "a photo of a {}.", params)


def _inputs(backbone, b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Inputs(features=F.normalize(torch.randn(b, backbone.embed_dim, generator=g), dim=-1))


def test_logits_shape_shared_and_per_sample(backbone):
    m = _coop(backbone)
    x = _inputs(backbone)
    assert m.logits(x, None).shape == (5, 3)
    per = {"ctx": m.init_prompt()["ctx"].expand(5, -1, -1)}
    assert m.logits(x, per).shape == (5, 3)
    torch.testing.assert_close(m.logits(x, per), m.logits(x, None), atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_the_prompt(backbone):
    m = _coop(backbone)
    labels = torch.tensor([0, 1, 2, 0, 1])
    m.loss(_inputs(backbone), labels).backward()
    assert m.prompt["ctx"].grad is not None and m.prompt["ctx"].grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.model.parameters())
    assert set(m.learnable_state()) == {"prompt.ctx"}


def test_per_sample_prompts_batched_equal_one_at_a_time(backbone):
    m = _coop(backbone)
    x = _inputs(backbone, 4)
    g = torch.Generator().manual_seed(1)
    prompts = {"ctx": torch.randn(4, 4, backbone.text_width, generator=g) * 0.02}
    batched = m.logits(x, prompts)
    single = torch.cat([m.logits(x[i : i + 1], {"ctx": prompts["ctx"][i : i + 1]})
                        for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_coop_initialised_from_template_reproduces_zero_shot(backbone):
    """A context equal to "a photo of a" gives exactly the zero-shot prompt's logits."""
    m = _coop(backbone, init="a photo of a")
    zs = get_method("zeroshot")(backbone, CLASSES, "a photo of a {}.", {})
    x = _inputs(backbone)
    torch.testing.assert_close(m.logits(x, None), zs.logits(x, None), atol=1e-4, rtol=1e-4)
    assert format_prompt("a photo of a {}.", "x") == "a photo of a x."


def test_new_class_names_rebuild_the_prompts(backbone):
    m = _coop(backbone)
    m.set_classnames(["pink star", "cyan ring"])
    assert m.logits(_inputs(backbone), None).shape == (5, 2)


def test_checkpoint_round_trip_gives_identical_logits(backbone, tmp_path):
    m = _coop(backbone)
    with torch.no_grad():
        m.prompt["ctx"].add_(0.1)
    save_prompt(tmp_path / "p.safetensors", m, {"classes": "base", "classnames": CLASSES})
    loaded, meta = load_prompt(tmp_path / "p.safetensors", backbone)
    x = _inputs(backbone)
    torch.testing.assert_close(loaded.logits(x, None), m.logits(x, None))
    assert meta["backbone"] == backbone.identity and meta["method"] == "coop"


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


def test_batched_overfitting_equals_one_at_a_time(backbone):
    m = _coop(backbone)
    m.requires_grad_(False)
    x, labels = _inputs(backbone, 4), torch.tensor([0, 1, 2, 1])
    batched, before, after = overfit_batch(m, x, labels, steps=3, lr=0.05)
    for i in range(4):
        single, b1, a1 = overfit_batch(m, x[i : i + 1], labels[i : i + 1], steps=3, lr=0.05)
        torch.testing.assert_close(batched["ctx"][i : i + 1], single["ctx"], atol=1e-5,
                                   rtol=1e-4)
        torch.testing.assert_close(before[i : i + 1], b1, atol=1e-5, rtol=1e-4)
    assert (after < before).all(), "overfitting must lower each sample's own loss"
