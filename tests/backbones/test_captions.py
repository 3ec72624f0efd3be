"""Captions as condition tokens (backbones/layers/caption.py): prepended in DiS and U-ViT, cross-attended in DiT and
the hourglass; a caption reaches the output only through the caption embedder, the empty caption is the null
condition guidance uses, and bad captions are refused in one line."""

from __future__ import annotations

import pytest
import torch

import archbench
from archbench.measure.flops import backbone_flops

VOCAB, TOKENS = 17, 9
FAMILIES = ["dis_t2", "uvit_t2", "dit_t2", "hourglass_t2", "hourglass_mixed_t2", "dis_t2:both",
            "uvit_bimamba_t2:both"]  # name:placement (the caption also after the patches)
OPTIONS = dict(image_size=16, in_channels=1, num_classes=0, caption_vocab=VOCAB, caption_tokens=TOKENS)


def captioned(name: str) -> torch.nn.Module:
    """A captioned model with random weights everywhere (adaLN-Zero would make an untrained DiT ignore them)."""
    torch.manual_seed(0)
    name, _, placement = name.partition(":")
    model = archbench.build(name, **OPTIONS, **({"caption_placement": placement} if placement else {})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def captions() -> torch.Tensor:
    return torch.tensor([[1, 14, 3, 5, 2, 1, 15, 4, 6], [1, 11, 3, 6, 2, 1, 10, 4, 5]])


@pytest.mark.parametrize("name", FAMILIES)
def test_a_caption_reaches_the_output_only_through_the_caption_embedder(name):
    model = captioned(name)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 700])
    with torch.no_grad():
        a, b = model(x, t, captions()), model(x, t, captions().flip(0))
        assert (a - b).abs().max() > 1e-6 and torch.equal(a, model(x, t, captions()))
        fixed = model.caption_embed(captions())
        handle = model.caption_embed.register_forward_hook(lambda module, args, out: fixed)
        try:  # the embedder's output held fixed: the words themselves change nothing else
            assert torch.equal(model(x, t, captions()), model(x, t, captions().flip(0)))
        finally:
            handle.remove()


@pytest.mark.parametrize("name", FAMILIES)
def test_the_empty_caption_is_the_null_condition_of_guidance(name):
    model = captioned(name)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 700])
    assert model.null_class == 0
    with torch.no_grad():
        null = model(x, t, torch.zeros_like(captions()))
        assert torch.isfinite(null).all() and torch.equal(null, model(x, t, None))
        dropped = model.caption_embed(captions(), force_drop=torch.ones(2, dtype=torch.bool))
        assert torch.equal(dropped, model.caption_embed(torch.zeros_like(captions())))
        unguided = model.forward_with_cfg(x, t, captions(), cfg_scale=0.0)  # scale 0: the unconditional branch
        channels = x.shape[1]
        torch.testing.assert_close(unguided[:, :channels], null[:, :channels], rtol=1e-5, atol=1e-5)


def test_training_with_caption_dropout_keeps_gradients_finite():
    model = archbench.build("dis_t2", **OPTIONS).train()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 700])
    torch.manual_seed(3)
    y = torch.cat([captions()[:1], torch.zeros_like(captions()[:1])])  # one empty caption: its tokens all masked
    model(x, t, y).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(("y", "message"), [
    (torch.zeros(2, 5, dtype=torch.long), r"y must be \(2, 9\) caption word indices"),
    (torch.full((2, 9), 17), r"caption word indices must lie in \[0, 16\]"),
    (torch.zeros(2, 9), "integer word indices"),
])
def test_bad_captions_are_one_line(y, message):
    model = archbench.build("dit_t2", **OPTIONS)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), y)


def test_labels_and_captions_together_are_refused():
    with pytest.raises(ValueError, match="give num_classes=0 with captions"):
        archbench.build("dis_t2", image_size=16, num_classes=10, caption_vocab=VOCAB, caption_tokens=TOKENS)


@pytest.mark.parametrize("name", ["dis_t2", "dit_t2"])
def test_the_flop_counter_prices_the_caption_path(name):
    plain = backbone_flops(name, image_size=16, in_channels=1, num_classes=10)
    with_captions = backbone_flops(name, **OPTIONS)
    assert with_captions["gmacs"] > plain["gmacs"]


@pytest.mark.parametrize("name", ["dis_t2", "uvit_bimamba_t2"])
def test_captions_at_both_ends_lengthen_the_sequence_by_one_caption(name):
    from archbench.measure.flops import token_count

    prepend, both = captioned(name), captioned(f"{name}:both")
    assert both.extras == prepend.extras and both.extras_after == TOKENS
    assert token_count(both) == token_count(prepend) + TOKENS
    assert both.pos_embed.shape[1] == prepend.pos_embed.shape[1] + TOKENS
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 700])
    rows = prepend.pos_embed.shape[1]
    with torch.no_grad():  # the same weights and leading positions: the appended copy is what changes the output
        prepend.load_state_dict({**both.state_dict(), "pos_embed": both.pos_embed[:, :rows]})
        out_both, out_prepend = both(x, t, captions()), prepend(x, t, captions())
    assert out_both.shape == out_prepend.shape == (2, both.out_channels, 16, 16)
    assert (out_both - out_prepend).abs().max() > 1e-6  # the backward scan reads the copy (decayed by distance)


def test_captions_at_both_ends_need_the_bidirectional_order_and_a_known_placement():
    with pytest.raises(ValueError, match="only the bidirectional scan order keeps in place; got scan_order='zigzag'"):
        archbench.build("dis_t2", **OPTIONS, caption_placement="both", scan_order="zigzag")
    with pytest.raises(ValueError, match="caption_placement must be one of prepend, both, got 'after'"):
        archbench.build("dis_t2", **OPTIONS, caption_placement="after")


@pytest.mark.parametrize("name", ["dis_t2", "uvit_t2", "dit_t2", "hourglass_t2"])
def test_precomputed_features_are_word_embeddings_by_another_road(name):
    """caption_dim=D takes (B, T, D) features through a linear layer: with one-hot features of the words and the
    word table as that layer's weight, a features model is the word-index model, output for output."""
    words = captioned(name)
    with torch.no_grad():
        words.caption_embed.words.weight[0].zero_()  # the padding word's row, as an all-zero feature row gives
    torch.manual_seed(1)
    features = archbench.build(name, **{**OPTIONS, "caption_vocab": 0, "caption_dim": VOCAB}).eval()
    state = words.state_dict()
    state["caption_embed.words.weight"] = state["caption_embed.words.weight"].T.contiguous()
    state["caption_embed.words.bias"] = torch.zeros(features.caption_embed.words.bias.shape)
    features.load_state_dict(state)
    one_hot = torch.nn.functional.one_hot(captions(), VOCAB).float()
    one_hot[captions() == 0] = 0  # padding: all-zero rows
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 700])
    with torch.no_grad():
        torch.testing.assert_close(features(x, t, one_hot), words(x, t, captions()), rtol=1e-5, atol=1e-5)
        null = features(x, t, torch.zeros_like(one_hot))
        assert torch.equal(null, features(x, t, None)) and not torch.allclose(null, features(x, t, one_hot))
        unguided = features.forward_with_cfg(x, t, one_hot, cfg_scale=0.0)
        torch.testing.assert_close(unguided[:, :1], null[:, :1], rtol=1e-5, atol=1e-5)
    assert features.example_condition(3).shape == (3, TOKENS, VOCAB)


def test_bad_features_and_both_kinds_at_once_are_one_line():
    model = archbench.build("dis_t2", **{**OPTIONS, "caption_vocab": 0, "caption_dim": 8})
    for y in (torch.zeros(2, TOKENS, 5), torch.zeros(2, TOKENS, 8, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"y must be \(2, 9, 8\) floating-point caption features"):
            model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), y)
    with pytest.raises(ValueError, match="give caption_vocab .word indices. or caption_dim .precomputed features., "
                                         "not both"):
        archbench.build("dis_t2", **OPTIONS, caption_dim=8)
