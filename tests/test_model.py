"""Behaviour of the encoder-decoder: causality, padding invariance, live cross-attention, cache equivalence,
learning, parameter count, and bad input."""

import itertools

import pytest
import torch

from seq2seq.model import (
    CopyAttention,
    ModelConfig,
    NGramEmbedding,
    SublayerConnection,
    Transformer,
    adapt,
    count_parameters,
)

POSITIONS = ["sinusoidal", "learned", "rotary"]


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=50, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=64,
                dropout=0.0, max_seq_len=64, pad_id=0)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_config(**overrides)).eval()


def random_ids(b: int, n: int, seed: int, low: int = 1, high: int = 50) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (b, n), generator=generator)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("norm_placement", ["post", "pre"])
@pytest.mark.parametrize("copy", [False, True])
def test_decoder_is_causal(positions, norm_placement, copy):
    model = tiny_model(positions=positions, norm_placement=norm_placement, copy_attention=copy)
    src, tgt = random_ids(2, 7, 1), random_ids(2, 9, 2)
    changed = tgt.clone()
    t = 4
    changed[:, t + 1:] = random_ids(2, 9 - t - 1, 3)
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("copy", [False, True])
def test_padding_changes_no_real_logit(positions, copy):
    model = tiny_model(positions=positions, copy_attention=copy)
    src, tgt = random_ids(2, 6, 1), random_ids(2, 5, 2)
    with torch.no_grad():
        reference = model(src, tgt)
        pad_src = torch.cat([src, torch.zeros(2, 4, dtype=torch.long)], dim=1)
        pad_tgt = torch.cat([tgt, torch.zeros(2, 3, dtype=torch.long)], dim=1)
        padded = model(pad_src, pad_tgt, src_padding_mask=pad_src == 0, tgt_padding_mask=pad_tgt == 0)
    torch.testing.assert_close(padded[:, :5], reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("copy", [False, True])
def test_mixed_length_batch_equals_each_example_alone(positions, copy):
    model = tiny_model(positions=positions, copy_attention=copy)
    lengths = [(3, 8), (9, 2), (6, 5)]
    examples = [(random_ids(1, s, 10 + i), random_ids(1, t, 20 + i)) for i, (s, t) in enumerate(lengths)]
    s_max, t_max = max(s for s, _ in lengths), max(t for _, t in lengths)
    src = torch.zeros(3, s_max, dtype=torch.long)
    tgt = torch.zeros(3, t_max, dtype=torch.long)
    for i, (s_ids, t_ids) in enumerate(examples):
        src[i, :s_ids.shape[1]] = s_ids[0]
        tgt[i, :t_ids.shape[1]] = t_ids[0]
    with torch.no_grad():
        batched = model(src, tgt, src_padding_mask=src == 0, tgt_padding_mask=tgt == 0)
        for i, (s_ids, t_ids) in enumerate(examples):
            alone = model(s_ids, t_ids)[0]
            torch.testing.assert_close(batched[i, :t_ids.shape[1]], alone, atol=1e-5, rtol=0)


def test_cross_attention_is_live():
    model = tiny_model()
    tgt = random_ids(1, 6, 2)
    with torch.no_grad():
        a = model(random_ids(1, 6, 1), tgt)
        b = model(random_ids(1, 6, 3), tgt)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("norm_placement", ["post", "pre"])
@pytest.mark.parametrize("copy", [False, True])
def test_cached_decoding_equals_full_forward(positions, norm_placement, copy):
    model = tiny_model(positions=positions, norm_placement=norm_placement, copy_attention=copy)
    src, tgt = random_ids(3, 7, 1), random_ids(3, 10, 2)
    src[1, 5:] = 0  # a padded source row
    src_mask = src == 0
    with torch.no_grad():
        full = model(src, tgt, src_padding_mask=src_mask)
        memory = model.encode(src, src_mask)
        cache = model.new_cache()
        steps = [model.log_probs(tgt[:, i:i + 1], memory, src, src_mask, cache=cache) for i in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    # Cross-attention keys/values were computed once and kept.
    assert all(layer.cross_kv is not None for layer in cache.layers)
    assert cache.length == tgt.shape[1]


@pytest.mark.parametrize("positions", ["sinusoidal", "rotary", "learned"])
@pytest.mark.parametrize("norm_placement", ["post", "pre"])
@pytest.mark.parametrize("copy", [False, True])
def test_static_cache_decoding_equals_full_forward(positions, norm_placement, copy):
    """The compiled decoding path's cache (fixed-size buffers, position as a tensor), run eagerly, in steps
    of one position and then of several."""
    model = tiny_model(positions=positions, norm_placement=norm_placement, copy_attention=copy)
    src, tgt = random_ids(3, 7, 1), random_ids(3, 10, 2)
    src[1, 5:] = 0
    src_mask = src == 0
    with torch.no_grad():
        full = model(src, tgt, src_padding_mask=src_mask)
        memory = model.encode(src, src_mask)
        cache = model.new_static_cache(memory, capacity=16)
        steps = [model.log_probs(tgt[:, i:i + 1], memory, src, src_mask, cache=cache) for i in range(6)]
        steps.append(model.log_probs(tgt[:, 6:], memory, src, src_mask, cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length.tolist() == [tgt.shape[1]]
    assert cache.layers[0].self_k.shape == (3, 4, 16, 8)  # the buffers never grew


def test_static_cache_capacity_past_learned_positions_is_an_error():
    model = tiny_model(positions="learned")
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_static_cache(torch.zeros(1, 3, model.config.d_model), capacity=model.config.max_seq_len + 1)


def test_cached_decoding_in_chunks_equals_full_forward():
    model = tiny_model(positions="rotary")
    src, tgt = random_ids(2, 5, 1), random_ids(2, 9, 2)
    with torch.no_grad():
        full = model(src, tgt)
        memory = model.encode(src)
        cache = model.new_cache()
        chunks = [model.log_probs(tgt[:, a:b], memory, src, cache=cache) for a, b in [(0, 4), (4, 5), (5, 9)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)


def test_cache_reorder_follows_beams():
    model = tiny_model()
    src, tgt = random_ids(2, 5, 1), random_ids(2, 6, 2)
    with torch.no_grad():
        memory = model.encode(src)
        cache = model.new_cache()
        model.decode(tgt[:, :3], memory, cache=cache)
        cache.reorder(torch.tensor([0, 0, 1, 1]))  # (2 -> 4 rows, one per beam): [a, a, b, b]
        order = torch.tensor([3, 0, 2, 1])  # -> [b, a, b, a]
        cache.reorder(order)
        step = model.log_probs(tgt[[1, 0, 1, 0], 3:4], memory.repeat_interleave(2, 0)[order], src[[1, 0, 1, 0]],
                                cache=cache)
        full = model(src, tgt)
    torch.testing.assert_close(step[:, 0], full[[1, 0, 1, 0], 3], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = Transformer(tiny_config(d_model=64, d_ff=128, norm_placement="pre")).train()
    src, tgt = random_ids(4, 8, 1), random_ids(4, 9, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


OPTION_GRID = list(itertools.product(["post", "pre"], ["layernorm", "rmsnorm"], POSITIONS,
                                     ["relu", "gelu", "swiglu"], [True, False]))


@pytest.mark.parametrize("placement,norm,positions,activation,tied", OPTION_GRID)
def test_every_option_builds_counts_and_trains(placement, norm, positions, activation, tied):
    config = tiny_config(norm_placement=placement, norm=norm, positions=positions, activation=activation,
                         tie_embeddings=tied, copy_attention=tied and positions == "rotary",
                         source_ngrams=(1, 2) if activation == "gelu" else ())
    torch.manual_seed(0)
    model = Transformer(config).train()
    assert model.num_parameters() == count_parameters(config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    src, tgt = random_ids(2, 6, 1), random_ids(2, 7, 2)
    loss = model.loss(src, tgt[:, :-1], tgt[:, 1:], label_smoothing=0.1)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_base_preset_parameter_count():
    # The paper's base model at a 37,000-token shared vocabulary: ~63M (Table 3 reports 65M).
    config = ModelConfig(vocab_size=37000)
    assert count_parameters(config) == 44_138_496 + 37000 * 512


def test_loss_ignores_padding_and_smooths():
    model = tiny_model()
    src, tgt = random_ids(2, 5, 1), random_ids(2, 6, 2)
    padded_out = tgt[:, 1:].clone()
    padded_out[0, 3:] = 0
    with torch.no_grad():
        logits = model(src, tgt[:, :-1])
        loss = model.loss(src, tgt[:, :-1], padded_out)
        keep = padded_out != 0
        expected = torch.nn.functional.cross_entropy(logits[keep], padded_out[keep])
        smoothed = model.loss(src, tgt[:, :-1], padded_out, label_smoothing=0.1)
        log_probs = logits[keep].log_softmax(-1)
        nll = -log_probs.gather(1, padded_out[keep][:, None]).squeeze(1)
        expected_smoothed = (0.9 * nll - 0.1 * log_probs.mean(-1)).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(smoothed, expected_smoothed)


def test_bf16_autocast_training_step_matches_fp32():
    """The CPU bf16 path (matmul-based attention, the fused loss in bf16) against fp32 on the same weights."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(dropout=0.0))
    src, tgt = torch.randint(4, 50, (3, 12)), torch.randint(4, 50, (3, 9))
    padding = torch.zeros(3, 12, dtype=torch.bool)
    padding[0, 8:] = True
    losses, grads = [], []
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model.loss(src, tgt[:, :-1], tgt[:, 1:], src_padding_mask=padding)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert abs(losses[0] - losses[1]) < 0.05 * abs(losses[0])
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_residual_dropout_keeps_one_minus_p_and_rescales(placement):
    torch.manual_seed(0)
    layer = SublayerConnection(ModelConfig(d_model=64, n_heads=4, dropout=0.3, norm_placement=placement))
    layer.norm = torch.nn.Identity()  # look at the residual sum itself
    x, update = torch.randn(200, 64), torch.randn(200, 64, requires_grad=True)
    out = layer.train()(x, lambda h: update)
    kept = (out - x) != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.02
    torch.testing.assert_close((out - x)[kept], (update / 0.7)[kept])
    out.sum().backward()
    torch.testing.assert_close(update.grad, kept.float() / 0.7)
    assert torch.equal(layer.eval()(x, lambda h: update), x + update)


@pytest.mark.parametrize("field,value", [("d_model", 30), ("n_heads", 0), ("d_ff", -1), ("vocab_size", 0),
                                         ("positions", "alibi"), ("activation", "tanh"), ("norm", "batch"),
                                         ("norm_placement", "middle"), ("dropout", 1.5), ("pad_id", 50)])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="d_modle"):
        ModelConfig.from_dict({"d_modle": 32})


def test_out_of_vocabulary_ids_raise_before_any_kernel():
    model = tiny_model()
    with pytest.raises(ValueError, match="src_ids.*outside"):
        model(torch.tensor([[1, 50]]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="tgt_ids.*outside"):
        model(torch.tensor([[1]]), torch.tensor([[-1]]))


def test_learned_positions_reject_long_sequences():
    model = tiny_model(positions="learned", max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(random_ids(1, 9, 1), random_ids(1, 3, 2))
    # Sinusoidal positions extend past max_seq_len.
    model = tiny_model(positions="sinusoidal", max_seq_len=8)
    assert model(random_ids(1, 12, 1), random_ids(1, 12, 2)).shape == (1, 12, 50)


# -- copy attention (pointer-generator) ------------------------------------------------------------------------


def test_copy_distribution_is_the_attention_summed_over_each_source_token():
    model = tiny_model(copy_attention=True)
    src = torch.tensor([[7, 9, 7, 12, 3, 0, 0]])  # token 7 twice; two padding positions
    mask = src == 0
    tgt = random_ids(1, 4, 2)
    with torch.no_grad():
        torch.nn.init.constant_(model.output_head.gate.bias, -40.0)  # copy only
        log_probs = model(src, tgt, src_padding_mask=mask)
        probs = log_probs.exp()
        torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4), atol=1e-4, rtol=0)
        assert probs[..., [3, 7, 9, 12]].sum(-1).min() > 0.999  # all mass on the real source tokens
        hidden = model.decode(tgt, model.encode(src, mask), mask)
        head = model.output_head
        scores = head.query(hidden) @ head.key(model.encode(src, mask)).transpose(1, 2) / 32 ** 0.5
        scores[:, :, 1:] += CopyAttention.FOLLOW_INIT * (src[:, None, :-1] == tgt[:, :, None])
        attention = scores.masked_fill(mask[:, None], float("-inf")).softmax(-1)
        torch.testing.assert_close(probs[..., 7], attention[..., 0] + attention[..., 2], atol=1e-5, rtol=0)
        torch.nn.init.constant_(model.output_head.gate.bias, 40.0)  # generate only: the vocabulary softmax
        logits = model.project(hidden)
        torch.testing.assert_close(model(src, tgt, src_padding_mask=mask), logits.log_softmax(-1), atol=1e-5,
                                   rtol=0)


def test_copying_goes_on_after_the_token_just_written():
    """With content scores all equal, the copy attention after writing token 9 is on the token after the 9 in the
    source: how a name of several tokens is copied whole."""
    model = tiny_model(copy_attention=True)
    src = torch.tensor([[5, 9, 12, 7, 30, 9, 14]])  # 9 twice: after it come 12 and 14
    with torch.no_grad():
        torch.nn.init.zeros_(model.output_head.query.weight)
        torch.nn.init.constant_(model.output_head.gate.bias, -40.0)
        probs = model(src, torch.tensor([[3, 9]]))[0, 1].exp()  # the step after writing 9
    follow = torch.tensor(CopyAttention.FOLLOW_INIT).exp()
    expected = follow / (2 * follow + 5)  # two following positions boosted, five not
    torch.testing.assert_close(probs[[12, 14]], torch.stack([expected, expected]), atol=1e-5, rtol=0)
    assert probs[[5, 7, 30]].max() < probs[12] / 10


def test_adding_copy_attention_keeps_the_pretrained_weights():
    model = tiny_model(positions="rotary")
    copying = adapt(model, {"copy_attention": True})
    assert isinstance(copying.output_head, CopyAttention) and adapt(copying, {"copy_attention": True}) is copying
    assert copying.num_parameters() == count_parameters(copying.config) > model.num_parameters()
    assert copying.output_head.gate.bias.item() == CopyAttention.GATE_BIAS
    src, tgt = random_ids(2, 6, 1), random_ids(2, 5, 2)
    with torch.no_grad():
        torch.nn.init.constant_(copying.output_head.gate.bias, 40.0)
        torch.testing.assert_close(copying(src, tgt), model(src, tgt), atol=1e-5, rtol=0)


@pytest.mark.parametrize("changes,key", [({"d_model": 64}, "model.d_model"), ({"positions": "learned"},
                                         "model.positions"), ({"depth": 3}, "model.depth")])
def test_fine_tuning_cannot_change_what_shapes_the_pretrained_weights(changes, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        adapt(tiny_model(), changes)


def test_every_model_answers_the_one_decoding_contract():
    """Greedy, sampling, beams, classification and scoring read `next_token_log_probs` / `log_probs`: for any
    model, extensions or not, they are normalised log-probabilities that agree with the full forward pass."""
    src, tgt = random_ids(2, 6, 1), random_ids(2, 5, 2)
    for extensions in ({}, {"copy_attention": True}, {"source_ngrams": (1, 2), "ngram_buckets": 31}):
        model = tiny_model(**extensions)
        with torch.no_grad():
            full = model(src, tgt)
            memory = model.encode(src)
            last = model.next_token_log_probs(tgt, memory, src)
        torch.testing.assert_close(full.exp().sum(-1), torch.ones(2, 5), atol=1e-4, rtol=0)
        torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_copy_loss_is_the_smoothed_weighted_nll_of_the_mixture(label_smoothing):
    model = tiny_model(copy_attention=True)
    src, tgt = random_ids(2, 5, 1), random_ids(2, 6, 2)
    src[1, 3] = src[1, 1]  # a token at two source positions: the smoothing term counts it once
    src[1, 4] = tgt[1, 2]  # a target the head can copy
    out = tgt[:, 1:].clone()
    out[0, 3:] = 0
    weights = torch.rand(out.shape)
    with torch.no_grad():
        keep = out != 0
        log_probs = model(src, tgt[:, :-1])[keep]
        nll = -log_probs.gather(1, out[keep][:, None]).squeeze(1)
        smoothed = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
        expected = (smoothed * weights[keep]).sum() / weights[keep].sum()
        got = model.loss(src, tgt[:, :-1], out, label_smoothing=label_smoothing, weights=weights)
        summed = model.loss(src, tgt[:, :-1], out, label_smoothing=label_smoothing, reduction="sum")
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(summed, smoothed.sum())
    # Without smoothing the loss reads only each target's probability; its gradients are the whole mixture's.
    fast = torch.autograd.grad(model.loss(src, tgt[:, :-1], out, label_smoothing=label_smoothing),
                               list(model.parameters()))
    log_probs = model(src, tgt[:, :-1])[keep]
    full = -(1 - label_smoothing) * log_probs.gather(1, out[keep][:, None]).mean() \
        - label_smoothing * log_probs.mean(-1).mean()
    for got_grad, want in zip(fast, torch.autograd.grad(full, list(model.parameters()))):
        torch.testing.assert_close(got_grad, want, atol=1e-5, rtol=1e-4)


def copy_task(n: int, seed: int, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources of 6 tokens from [low, high) after a marker (1) at a random position; the answer is the token
    after the marker, then end (2)."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(low, high, (n, 8), generator=generator)
    at = torch.randint(0, 6, (n,), generator=generator)
    src[torch.arange(n), at] = 1
    answer = src[torch.arange(n), at + 1]
    tgt = torch.stack([torch.full((n,), 3), answer, torch.full((n,), 2)], 1)  # 3: begin
    return src, tgt


@pytest.mark.slow
@pytest.mark.parametrize("copy", [False, True])
def test_copy_attention_copies_tokens_never_seen_as_answers(copy):
    """Trained to answer the token after a marker, with tokens 4-39 only, then asked about tokens 40-49: the
    copying model reads them off the source most of the time; the plain model, whose output layer never learned
    to produce them, never does (as test speakers come from plays that train never saw)."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(d_model=64, d_ff=128, norm_placement="pre", copy_attention=copy)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        src, tgt = copy_task(64, step, 4, 40)
        loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    src, tgt = copy_task(256, 10_000, 40, 50)
    with torch.no_grad():
        predicted = model.eval()(src, tgt[:, :-1])[:, 0].argmax(-1)
    accuracy = (predicted == tgt[:, 1]).float().mean().item()
    assert accuracy > 0.5 if copy else accuracy < 0.05


# -- hashed n-gram embeddings of the source -------------------------------------------------------------------


def ngram_model(seed: int = 0, **overrides) -> Transformer:
    """A tiny model with bigram and trigram tables filled at random (a fresh model's are zero)."""
    model = tiny_model(seed, source_ngrams=(2, 3), ngram_buckets=97, **overrides)
    torch.nn.init.normal_(model.source_extension.weight, std=0.2)
    return model


def test_an_ngram_row_depends_on_its_last_n_tokens_only():
    table = NGramEmbedding(tiny_config(source_ngrams=(1, 2, 3), ngram_buckets=1 << 20))
    ids = random_ids(1, 12, 1)
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] % 49) + 1  # another token at position 5
    moved = table.rows(ids) != table.rows(changed)  # (1, 12, orders)
    for k, n in enumerate((1, 2, 3)):
        assert moved[0, :, k].nonzero().flatten().tolist() == list(range(5, 5 + n))
    assert torch.equal(table.rows(ids)[..., 0], ids)  # unigrams are not hashed: a row per token
    # Distinct bigrams land in distinct rows (2,401 bigrams, a million buckets), and before the start is padding.
    pairs = torch.tensor([[a, b] for a in range(1, 50) for b in range(1, 50)])
    assert table.rows(pairs)[:, 1, 1].unique().numel() == len(pairs)
    after_padding = torch.cat([torch.zeros_like(pairs[:, :1]), pairs[:, 1:]], 1)
    assert torch.equal(table.rows(pairs[:, 1:])[:, 0, 1], table.rows(after_padding)[:, 1, 1])


def test_source_ngrams_change_the_encoding_and_keep_padding_invariance():
    model = ngram_model(positions="rotary")
    plain = tiny_model(positions="rotary")
    lengths = [(3, 8), (9, 2), (6, 5)]
    examples = [(random_ids(1, s, 10 + i), random_ids(1, t, 20 + i)) for i, (s, t) in enumerate(lengths)]
    src = torch.zeros(3, 9, dtype=torch.long)
    tgt = torch.zeros(3, 8, dtype=torch.long)
    for i, (s_ids, t_ids) in enumerate(examples):
        src[i, :s_ids.shape[1]], tgt[i, :t_ids.shape[1]] = s_ids[0], t_ids[0]
    with torch.no_grad():
        batched = model(src, tgt, src_padding_mask=src == 0, tgt_padding_mask=tgt == 0)
        for i, (s_ids, t_ids) in enumerate(examples):
            alone = model(s_ids, t_ids)[0]
            torch.testing.assert_close(batched[i, :t_ids.shape[1]], alone, atol=1e-5, rtol=0)
            assert (alone - plain(s_ids, t_ids)[0]).abs().max() > 1e-2  # same weights but for the tables


def test_adding_source_ngrams_keeps_the_model_until_the_tables_learn():
    model = tiny_model(copy_attention=True)
    reading = adapt(model, {"source_ngrams": [2], "ngram_buckets": 101, "ngram_dropout": 0.25})
    assert adapt(reading, {"source_ngrams": [2], "ngram_buckets": 101, "ngram_dropout": 0.25}) is reading
    with pytest.raises(ValueError, match="model.source_ngrams"):
        adapt(reading, {"source_ngrams": [3], "ngram_buckets": 7})  # other tables than those trained
    assert reading.config.source_ngrams == (2,) and reading.config.ngram_dropout == 0.25
    assert reading.num_parameters() == count_parameters(reading.config) == model.num_parameters() + 101 * 32
    src, tgt = random_ids(2, 6, 1), random_ids(2, 5, 2)
    with torch.no_grad():
        torch.testing.assert_close(reading(src, tgt), model(src, tgt), atol=1e-6, rtol=0)
    optimizer = torch.optim.SGD(reading.parameters(), lr=0.1)
    reading.loss(src, tgt[:, :-1], tgt[:, 1:]).backward()
    optimizer.step()
    assert reading.source_extension.weight.abs().sum() > 0  # the tables get gradients from the start


def test_ngram_dropout_drops_whole_positions_in_training_only():
    table = NGramEmbedding(tiny_config(source_ngrams=(2,), ngram_buckets=1 << 12, ngram_dropout=0.5))
    torch.nn.init.normal_(table.weight)
    ids = random_ids(4, 50, 1)
    full = table.eval()(ids)
    torch.manual_seed(0)
    dropped = table.train()(ids)
    kept = dropped.abs().sum(-1) > 0
    assert 0.3 < kept.float().mean() < 0.7
    torch.testing.assert_close(dropped[kept], 2 * full[kept])  # survivors scaled by 1 / (1 - p)


@pytest.mark.parametrize("field,value", [("source_ngrams", (0,)), ("source_ngrams", (2, 2)),
                                         ("ngram_buckets", 0), ("ngram_dropout", 1.0)])
def test_bad_ngram_settings_are_errors(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})
