"""The three variants on tiny random models: exact equalities the design promises, and where they differ."""

import pytest
import torch
from transformers import Qwen2ForCausalLM

from crossgraft.llava import MODEL_CLASSES
from crossgraft.llava.configuration import IMAGE_TOKEN_INDEX, LlavaConfigError
from crossgraft.llava.sample import tiny_llava_config

BASE, ALT, CROSS = "llava_qwen", "llava_qwen_with_alternating_attn", "llava_qwen_with_alternating_cross_attn"


def build(kind, tokenizer, attn="sdpa", seed=0, **overrides):
    torch.manual_seed(seed)
    config = tiny_llava_config(kind, tokenizer, **overrides)
    config._attn_implementation = attn
    return MODEL_CLASSES[kind](config).eval()


def text_batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 250, (2, 9), generator=generator)
    attention_mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    return input_ids, attention_mask


def image_batch():
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, 250, (2, 8), generator=generator)
    input_ids[0, 2] = IMAGE_TOKEN_INDEX
    input_ids[1, 1] = IMAGE_TOKEN_INDEX
    attention_mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    images = torch.randn(2, 3, 32, 32, generator=generator)
    return input_ids, attention_mask, images


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [True, False])
def test_alternating_equals_base_exactly_on_text_only_input(tiny_tokenizer, attn, padded):
    base, alternating = build(BASE, tiny_tokenizer, attn), build(ALT, tiny_tokenizer, attn)
    alternating.load_state_dict(base.state_dict())
    input_ids, attention_mask = text_batch()
    if not padded:
        attention_mask = torch.ones_like(attention_mask)
    with torch.no_grad():
        expected = base(input_ids=input_ids, attention_mask=attention_mask).logits
        got = alternating(input_ids=input_ids, attention_mask=attention_mask).logits
    assert alternating.config.alternating_layers == [1]
    assert torch.equal(got, expected)


def test_alternating_differs_from_base_once_images_are_in(tiny_tokenizer):
    base, alternating = build(BASE, tiny_tokenizer), build(ALT, tiny_tokenizer)
    alternating.load_state_dict(base.state_dict())
    input_ids, attention_mask, images = image_batch()
    with torch.no_grad():
        expected = base(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
        got = alternating(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
    # Before the first image token the sequences are identical; after it, layer 1 hides the image from text.
    assert torch.equal(got[0, :2], expected[0, :2])
    assert not torch.allclose(got[0, -1], expected[0, -1])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gated_cross_equals_base_exactly_at_init_on_multimodal_input(tiny_tokenizer, attn):
    base = build(BASE, tiny_tokenizer, attn)
    cross = build(CROSS, tiny_tokenizer, attn, xattn_every_n_layers=2)
    assert cross.config.xattn_mode == "gated" and cross.config.xattn_layers == [1, 3]
    missing, unexpected = cross.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(".xattn." in key for key in missing)
    assert all(p.item() == 0.0 for n, p in cross.named_parameters() if n.endswith("_gate"))
    input_ids, attention_mask, images = image_batch()
    with torch.no_grad():
        expected = base(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
        got = cross(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
    assert torch.equal(got, expected)

    with torch.no_grad():
        for name, parameter in cross.named_parameters():
            if name.endswith("attn_gate"):
                parameter.fill_(0.5)
        opened = cross(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
    assert not torch.allclose(opened, expected)  # the blocks are live once a gate opens


def test_gate_gradients_flow_at_zero(tiny_tokenizer):
    cross = build(CROSS, tiny_tokenizer, xattn_every_n_layers=2).train()
    input_ids, attention_mask, images = image_batch()
    labels = input_ids.clamp(min=0)
    cross(input_ids=input_ids, attention_mask=attention_mask, labels=labels, images=images).loss.backward()
    gates = {n: p.grad for n, p in cross.named_parameters() if n.endswith("attn_gate")}
    assert gates and all(g is not None and g.abs().item() > 0 for g in gates.values())


def test_mask_mode_attends_across_modalities_and_differs_from_base(tiny_tokenizer):
    base = build(BASE, tiny_tokenizer)
    masked = build(CROSS, tiny_tokenizer, xattn_mode="mask")
    assert masked.config.attention_pattern == "cross_modality"
    assert len(masked.model.xattn) == 0  # mask mode adds no weights
    assert masked.load_state_dict(base.state_dict(), strict=True)
    input_ids, attention_mask = text_batch()
    with torch.no_grad():
        expected = base(input_ids=input_ids, attention_mask=attention_mask).logits
        got = masked(input_ids=input_ids, attention_mask=attention_mask).logits
    # On text only, layer 1 lets each token see itself alone, so the model differs from base after position 0.
    assert torch.equal(got[:, 0], expected[:, 0])
    assert not torch.allclose(got[:, 1:], expected[:, 1:])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [True, False])
def test_base_on_text_matches_plain_qwen2(tiny_tokenizer, attn, padded):
    base = build(BASE, tiny_tokenizer, attn)
    qwen = Qwen2ForCausalLM(base.config).eval()
    qwen.load_state_dict(base.state_dict(), strict=False)
    input_ids, attention_mask = text_batch()
    if not padded:
        attention_mask = torch.ones_like(attention_mask)
    with torch.no_grad():
        expected = qwen(input_ids=input_ids, attention_mask=attention_mask).logits
        got = base(input_ids=input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_left_and_right_padding_give_the_same_logits(tiny_tokenizer):
    right = build(ALT, tiny_tokenizer)
    left = build(ALT, tiny_tokenizer, tokenizer_padding_side="left")
    input_ids, attention_mask, images = image_batch()
    with torch.no_grad():
        a = right(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
        b = left(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
    assert torch.isfinite(b).all()
    # Row 1 is shorter: right padding puts its tokens first, left padding last.
    n = attention_mask[1].sum().item() - 1 + 17  # one placeholder became 16 patches + 1 newline
    torch.testing.assert_close(a[1, :n], b[1, -n:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[0], b[0])


def test_splicing_shapes_labels_and_errors(tiny_tokenizer):
    model = build(BASE, tiny_tokenizer)
    input_ids, attention_mask, images = image_batch()
    labels = input_ids.clamp(min=0)
    spliced = model.model.prepare_multimodal_inputs(input_ids, attention_mask, labels, images)
    assert spliced.inputs_embeds.shape == (2, 8 - 1 + 17, 64)
    assert spliced.image_token_mask.sum(dim=1).tolist() == [17, 17]
    assert (spliced.labels[spliced.image_token_mask] == -100).all()
    assert spliced.image_context is None  # only gated models read it
    gated = build(CROSS, tiny_tokenizer, xattn_every_n_layers=2)
    assert gated.model.prepare_multimodal_inputs(input_ids, attention_mask, labels, images).image_context.shape == (
        2,
        17,
        64,
    )
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        model(input_ids=input_ids, attention_mask=attention_mask, images=images[:1])


def test_flash_attention_is_rejected_with_a_reason(tiny_tokenizer):
    model = build(BASE, tiny_tokenizer)
    model.config._attn_implementation = "flash_attention_2"
    input_ids, attention_mask = text_batch()
    with pytest.raises(LlavaConfigError, match="flash_attention_2' is not supported.*sdpa"):
        model(input_ids=input_ids, attention_mask=attention_mask)


def test_parameter_names_follow_llava_next(tiny_tokenizer):
    keys = set(build(CROSS, tiny_tokenizer, xattn_every_n_layers=2).state_dict())
    for key in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "model.mm_projector.0.weight",
        "model.mm_projector.2.weight",
        "model.image_newline",
        "model.xattn.1.attn_gate",
        "lm_head.weight",
    ):
        assert key in keys, key
    # LLaVA-NeXT drops SigLIP's last layer (mm_vision_select_layer -2): 3 configured, 2 built.
    assert not any("encoder.layers.2." in key for key in keys)


@pytest.mark.parametrize("kind", [BASE, ALT, CROSS])
def test_greedy_generation_is_batch_invariant_and_matches_forward(tiny_tokenizer, kind):
    model = build(kind, tiny_tokenizer, xattn_every_n_layers=2) if kind == CROSS else build(kind, tiny_tokenizer)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.5)  # an open gate, so the blocks take part
    input_ids, attention_mask, images = image_batch()
    together = model.generate(input_ids, attention_mask, images, max_new_tokens=5, eos_token_id=[], pad_token_id=0)
    assert together.shape == (2, 5)
    for row in range(2):
        real = attention_mask[row].bool()
        alone = model.generate(
            input_ids[row : row + 1, real], None, images[row : row + 1], max_new_tokens=5, eos_token_id=[]
        )
        assert torch.equal(alone[0], together[row])
    with torch.no_grad():
        logits = model(input_ids=input_ids[:1], images=images[:1]).logits
    assert together[0, 0].item() == logits[0, -1].argmax().item()


def test_generation_stops_at_eos_and_pads(tiny_tokenizer):
    model = build(BASE, tiny_tokenizer)
    input_ids, attention_mask = text_batch()
    first = model.generate(input_ids, attention_mask, max_new_tokens=1, eos_token_id=[])
    eos = first[0, 0].item()  # row 0's first token is made its end token
    out = model.generate(input_ids, attention_mask, max_new_tokens=4, eos_token_id=eos, pad_token_id=-1)
    assert out[0, 0].item() == eos and (out[0, 1:] == -1).all()


def two_image_batch():
    """Row 0: two images and right padding; row 1: one image, a longer prompt."""
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, 250, (2, 11), generator=generator)
    input_ids[0, [1, 5]] = IMAGE_TOKEN_INDEX
    input_ids[1, 3] = IMAGE_TOKEN_INDEX
    attention_mask = torch.tensor([[1] * 8 + [0] * 3, [1] * 11])
    images = torch.randn(3, 3, 32, 32, generator=generator)
    return input_ids, attention_mask, images


VARIANTS = [
    (BASE, {}),
    (ALT, {}),
    (CROSS, {"xattn_mode": "gated", "xattn_every_n_layers": 2}),
    (CROSS, {"xattn_mode": "mask"}),
]


def open_gates(model):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.5)  # an open gate, so the blocks take part
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind, overrides", VARIANTS, ids=["base", "alternating", "cross_gated", "cross_mask"])
def test_cached_decoding_equals_full_forward_decoding(tiny_tokenizer, kind, overrides, attn):
    model = open_gates(build(kind, tiny_tokenizer, attn, **overrides))
    input_ids, attention_mask, images = two_image_batch()
    options = dict(max_new_tokens=12, eos_token_id=[], pad_token_id=0, output_scores=True)
    cached = model.decode(input_ids, attention_mask, images, **options)
    full = model.decode(input_ids, attention_mask, images, use_cache=False, **options)
    assert torch.equal(cached.tokens, full.tokens)
    assert cached.scores.shape == full.scores.shape == (2, 12, model.config.vocab_size)
    difference = (cached.scores - full.scores).abs().max().item()
    assert difference <= 1e-5, difference
    # The rules do act on the answer: the variant's logits differ from base's on the same weights.
    if kind != BASE:
        base = build(BASE, tiny_tokenizer, attn)
        base.load_state_dict(model.state_dict(), strict=False)
        base_scores = base.decode(input_ids, attention_mask, images, **options).scores
        assert not torch.allclose(base_scores, cached.scores, atol=1e-4)


@pytest.mark.parametrize("kind, overrides", VARIANTS, ids=["base", "alternating", "cross_gated", "cross_mask"])
def test_cached_sampling_equals_uncached_sampling(tiny_tokenizer, kind, overrides):
    model = open_gates(build(kind, tiny_tokenizer, **overrides))
    input_ids, attention_mask, images = two_image_batch()
    runs = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(7)
        runs.append(
            model.generate(
                input_ids, attention_mask, images, max_new_tokens=10, eos_token_id=[], do_sample=True, temperature=1.5,
                top_p=0.9, generator=generator, use_cache=use_cache,
            )
        )  # fmt: skip
    assert torch.equal(*runs)
    greedy = model.generate(input_ids, attention_mask, images, max_new_tokens=10, eos_token_id=[])
    assert not torch.equal(runs[0], greedy)  # at temperature 1.5 on random weights, sampling leaves the argmax


def test_gated_image_keys_and_values_are_computed_once_per_generation(tiny_tokenizer, monkeypatch):
    from crossgraft.llava.modeling import GatedCrossAttentionBlock

    model = open_gates(build(CROSS, tiny_tokenizer, xattn_every_n_layers=2))
    calls = []
    original = GatedCrossAttentionBlock.image_keys_values
    monkeypatch.setattr(
        GatedCrossAttentionBlock, "image_keys_values", lambda self, c: calls.append(1) or original(self, c)
    )
    input_ids, attention_mask, images = two_image_batch()
    model.generate(input_ids, attention_mask, images, max_new_tokens=8, eos_token_id=[])
    assert len(calls) == len(model.model.xattn) == 2  # one per block, not one per step


def test_top_p_keeps_the_smallest_likely_set(tiny_tokenizer):
    from crossgraft.llava.modeling import sample_token

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, 4)
    generator = torch.Generator().manual_seed(0)
    picked = sample_token(logits, 1.0, 0.75, generator)
    counts = torch.bincount(picked, minlength=4)
    assert counts[2:].sum() == 0  # 0.5 + 0.3 reaches 0.75: tokens 2 and 3 are never drawn
    assert abs(counts[0].item() / 2000 - 0.5 / 0.8) < 0.05
    with pytest.raises(LlavaConfigError, match="top_p"):
        build(BASE, tiny_tokenizer).decode(torch.ones(1, 3, dtype=torch.long), top_p=0.0)


@pytest.mark.slow  # compiles flex_attention kernels
def test_flex_attention_equals_sdpa_for_every_variant_and_in_cached_decoding(tiny_tokenizer):
    """attn_implementation="flex_attention" (compiled by transformers on first use) against sdpa, fp32 on CPU."""
    input_ids, attention_mask, images = two_image_batch()
    for kind, overrides in VARIANTS:
        reference = open_gates(build(kind, tiny_tokenizer, "sdpa", **overrides))
        flex = open_gates(build(kind, tiny_tokenizer, "flex_attention", **overrides))
        with torch.no_grad():
            expected = reference(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
            got = flex(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
        assert (got - expected).abs().max() <= 1e-5, kind
        if overrides.get("xattn_mode") == "mask":  # cached steps: one query, left-padded prompt
            options = dict(max_new_tokens=4, eos_token_id=[], pad_token_id=0, output_scores=True)
            cached = flex.decode(input_ids, attention_mask, images, **options)
            full = reference.decode(input_ids, attention_mask, images, use_cache=False, **options)
            assert torch.equal(cached.tokens, full.tokens)
            assert (cached.scores - full.scores).abs().max() <= 1e-5


def test_the_per_layer_rules_are_data_in_the_config_that_forward_reads(tiny_tokenizer, tmp_path):
    alternating = build(ALT, tiny_tokenizer)
    assert alternating.config.layer_attention_rules == ["causal", "within_modality", "causal", "causal"]
    base = build(BASE, tiny_tokenizer)
    base.load_state_dict(alternating.state_dict())
    input_ids, attention_mask, images = image_batch()
    with torch.no_grad():
        expected = base(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
        alternating.config.layer_attention_rules = ["causal"] * 4  # forward follows the stored rules
        assert torch.equal(
            alternating(input_ids=input_ids, attention_mask=attention_mask, images=images).logits, expected
        )
    with pytest.raises(LlavaConfigError, match="layer_attention_rules must name one of causal"):
        tiny_llava_config(ALT, tiny_tokenizer, layer_attention_rules=["causal", "sideways", "causal", "causal"])


def test_a_config_json_without_the_rules_loads_to_the_same_model(tiny_tokenizer, tmp_path):
    import json

    from crossgraft.llava.loading import load_model

    alternating = build(ALT, tiny_tokenizer)
    alternating.save_pretrained(tmp_path / "with")
    written = json.loads((tmp_path / "with" / "config.json").read_text())
    assert written["layer_attention_rules"] == ["causal", "within_modality", "causal", "causal"]
    del written["layer_attention_rules"]  # as LLaVA-NeXT's configs, and crossgraft's before the field, are
    alternating.save_pretrained(tmp_path / "without")
    (tmp_path / "without" / "config.json").write_text(json.dumps(written))
    with_rules, without = load_model(str(tmp_path / "with")), load_model(str(tmp_path / "without"))
    assert without.config.layer_attention_rules == with_rules.config.layer_attention_rules
    input_ids, attention_mask, images = image_batch()
    with torch.no_grad():
        logits = [
            m(input_ids=input_ids, attention_mask=attention_mask, images=images).logits for m in (with_rules, without)
        ]
    assert torch.equal(*logits)
    # built as another variant, a checkpoint takes that variant's rules, not the ones it was saved with
    base = build(BASE, tiny_tokenizer)
    base.save_pretrained(tmp_path / "base")
    converted = load_model(str(tmp_path / "base"), variant="alternating", force=True)
    assert converted.config.layer_attention_rules == ["causal", "within_modality", "causal", "causal"]
