"""Backbone loading (named models, local checkpoints, clear errors) and exact text truncation."""

from __future__ import annotations

import open_clip
import pytest
import torch

from pdiff.backbone import backbone_identity, load_backbone, register_model_configs
from pdiff.errors import PdiffError

PROMPTS = ["a photo of a red circle.", "a cat", "X X X X X X X X X X X X X X X X blue star."]


def test_open_clip_loads_our_checkpoint_by_name(tiny_checkpoint):
    register_model_configs()
    model = open_clip.create_model("pdiff-tiny", pretrained=tiny_checkpoint)
    assert model.visual.image_size[0] == 32


def test_truncated_text_encoding_is_exact(backbone):
    tokens = backbone.tokenize(PROMPTS)
    emb = backbone.token_embeddings(tokens)
    with torch.no_grad():
        fast = backbone.encode_text_embeddings(emb, tokens.argmax(-1), truncate=True)
        full = backbone.encode_text_embeddings(emb, tokens.argmax(-1), truncate=False)
        reference = backbone.model.encode_text(tokens)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def test_truncation_exact_on_a_vit_b_16_text_tower():
    """The real benchmark's text tower (random weights: no download needed)."""
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    model.eval()
    tok = open_clip.get_tokenizer("ViT-B-16")(PROMPTS)
    from pdiff.backbone import encode_text_embeddings

    with torch.no_grad():
        fast = encode_text_embeddings(model, model.token_embedding(tok), tok.argmax(-1))
        reference = model.encode_text(tok)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_image_features_are_normalised(backbone):
    feats = backbone.encode_images(torch.rand(3, 3, 32, 32))
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))


def test_identity_records_the_checkpoint_hash(backbone_spec, backbone):
    ident = backbone_identity(backbone_spec)
    assert ident == backbone.identity and len(ident["sha256"]) == 64


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": "no-such-model", "pretrained": "shipped"}, "unknown open_clip model"),
        ({"model": "pdiff-tiny", "pretrained": "missing.safetensors"}, "not found"),
        ({"model": "ViT-B-16", "pretrained": "no-such-tag"}, "unknown pretrained tag"),
        ({"model": "ViT-B-16", "pretrained": "openai"}, "pdiff fetch-weights"),
    ],
)
def test_bad_backbone_specs_give_one_clear_error(spec, message, tmp_path, monkeypatch):
    monkeypatch.setenv("PDIFF_WEIGHTS", str(tmp_path))
    with pytest.raises(PdiffError, match=message):
        load_backbone(spec)


def test_a_corrupt_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PdiffError, match="could not load"):
        load_backbone({"model": "pdiff-tiny", "pretrained": str(bad)})


def test_fetch_weights_offline_fails_clearly_and_leaves_nothing(tmp_path):
    from pdiff.backbone import fetch_weights

    with pytest.raises(PdiffError, match="could not fetch ViT-B-16/openai"):
        fetch_weights("ViT-B-16", "openai", tmp_path)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_shipped_checkpoint_matches_its_recipe_and_loads():
    import json

    from pdiff.backbone import ASSET_DIR, file_sha256

    recipe = json.loads((ASSET_DIR / "pdiff-tiny.json").read_text())
    path = ASSET_DIR / recipe["file"]
    assert path.stat().st_size <= 20 * 2**20
    assert file_sha256(str(path)) == recipe["sha256"]
    bb = load_backbone({"model": "pdiff-tiny", "pretrained": "shipped"})
    assert bb.identity["sha256"] == recipe["sha256"]
    assert "pdiff pretrain" in recipe["command"]


def test_mixed_precision_is_offered_and_a_no_op_on_cpu(backbone_spec):
    """`backbone.amp: true` turns on bf16 autocast on CUDA only; on CPU features are unchanged."""
    from pdiff.backbone import load_backbone

    plain, amp = load_backbone(backbone_spec), load_backbone({**backbone_spec, "amp": True})
    assert amp.amp and not plain.amp
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(amp.encode_images(images), plain.encode_images(images))
    assert amp.identity == plain.identity  # the same weights: artifacts stay compatible
