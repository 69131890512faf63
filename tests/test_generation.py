"""Generation: the cache changes no token (greedy and beam search, batch 1 and several, mixed prompt lengths),
beam scores are the model's own log-probabilities, the sampling controls, seeds, stop strings, and streaming
that joins to the non-streamed text without ever showing half a character.

The tiny tokenizer and model come from helpers.py (shared with test_repl.py, test_classify.py and
test_prompting.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPTS, tiny_model, train_tokenizer

from seq2seq.generation import (
    GenerationConfig,
    Hypotheses,
    LogitsProcessor,
    Row,
    generate,
    sample_next,
    stream,
)
from seq2seq.model import ModelConfig, Transformer
from seq2seq.prompting import build_source
from seq2seq.tokenizer import Tokenizer

MULTI_BYTE = "naïve café: 3€ — 日本語 😀!"  # mostly outside the tiny vocabulary: spelled as UTF-8 bytes


def sources_for(tokenizer: Tokenizer, prompts: list[str]) -> list[list[int]]:
    return [build_source(tokenizer, p, task="prefix_lm", tone=None, max_len=64).ids for p in prompts]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer) -> Transformer:
    return tiny_model(tokenizer)


def banned_ids(tokenizer: Tokenizer) -> list[int]:
    return [i for i in range(tokenizer.vocab_size) if tokenizer.is_special(i) and i != tokenizer.eos_id]


def reference_log_probs(model: Transformer, tokenizer: Tokenizer, source: list[int], prefix: list[int]) -> torch.Tensor:
    """Next-token log-probabilities after `prefix`, from a full forward pass (no cache), reserved tokens banned."""
    with torch.no_grad():
        logits = model(torch.tensor([source]), torch.tensor([prefix]))[0, -1]
    logits[banned_ids(tokenizer)] = -float("inf")
    return logits.log_softmax(-1)


def reference_greedy(model: Transformer, tokenizer: Tokenizer, source: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding the slow way: the whole decoder over the whole prefix at every step, one source alone."""
    prefix = [tokenizer.bos_id]
    while len(prefix) <= max_new_tokens:
        prefix.append(int(reference_log_probs(model, tokenizer, source, prefix).argmax()))
        if prefix[-1] == tokenizer.eos_id:
            break
    return prefix[1:]


# ---------------------------------------------------------------------------------------------------------
# The cache changes nothing


@pytest.mark.parametrize("batch", [1, 5])
def test_cached_greedy_equals_a_full_forward_reference(model, tokenizer, batch):
    sources = sources_for(tokenizer, PROMPTS[:batch])
    results = generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=20))
    expected = [reference_greedy(model, tokenizer, source, 20) for source in sources]
    assert [r.token_ids for r in results] == expected
    if batch > 1:  # the batch mixes answers that end with </s> at different steps and answers cut at the limit
        assert {r.finish_reason for r in results} == {"eos", "length"}
    uncached = generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=20, use_cache=False))
    assert [r.token_ids for r in uncached] == expected


@pytest.mark.parametrize("positions", ["sinusoidal", "rotary", "learned"])
def test_batched_generation_equals_each_source_alone(tokenizer, positions):
    model = tiny_model(tokenizer, positions=positions)
    sources = sources_for(tokenizer, PROMPTS)
    config = GenerationConfig(max_new_tokens=16)
    batched = [r.token_ids for r in generate(model, tokenizer, sources, config)]
    assert batched == [generate(model, tokenizer, [s], config)[0].token_ids for s in sources]


@pytest.mark.parametrize("batch", [1, 4])
def test_cached_beam_search_equals_uncached(model, tokenizer, batch):
    sources = sources_for(tokenizer, PROMPTS[:batch])
    config = GenerationConfig(max_new_tokens=12, num_beams=3)
    cached = generate(model, tokenizer, sources, config)
    uncached = generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=12, num_beams=3, use_cache=False))
    assert [r.token_ids for r in cached] == [r.token_ids for r in uncached]
    assert [r.score for r in cached] == pytest.approx([r.score for r in uncached], abs=1e-4)


@pytest.mark.slow
def test_compiled_decoding_equals_eager(tokenizer):
    """torch.compile over the static cache: the same tokens, texts and finish reasons as eager decoding, for a
    batch of mixed source lengths whose rows end at different steps (they decode on, unread), greedy, and sampled
    (one compiled graph)."""
    from torch._dynamo.utils import counters

    model = tiny_model(tokenizer, seed=3)
    sources = sources_for(tokenizer, PROMPTS)
    counters.clear()
    for settings in (dict(max_new_tokens=30), dict(max_new_tokens=30, temperature=0.9, top_k=30, seed=4)):
        eager = generate(model, tokenizer, sources, GenerationConfig(**settings))
        compiled = generate(model, tokenizer, sources, GenerationConfig(**settings, compile=True))
        assert compiled == eager
        assert len({len(r.token_ids) for r in eager}) > 1  # rows did finish at different steps
    assert counters["stats"]["unique_graphs"] == 1  # one graph served every step of both decodings


def test_beam_scores_are_the_models_log_probabilities(model, tokenizer):
    """If the cache were not reordered with the beams, the tokens of a beam would have been scored under
    another beam's history, and the teacher-forced log-probability would not match."""
    sources = sources_for(tokenizer, PROMPTS[:4])
    for length_penalty in (1.0, 0.0, 2.0):
        config = GenerationConfig(max_new_tokens=10, num_beams=4, length_penalty=length_penalty)
        for source, result in zip(sources, generate(model, tokenizer, sources, config), strict=True):
            prefix = [tokenizer.bos_id]
            total = 0.0
            for token in result.token_ids:
                total += float(reference_log_probs(model, tokenizer, source, prefix)[token])
                prefix.append(token)
            assert result.score == pytest.approx(total / len(result.token_ids) ** length_penalty, abs=1e-4)


def test_beam_search_computes_cross_attention_keys_values_once(model, tokenizer, monkeypatch):
    calls = []
    for layer in model.decoder.layers:
        original = layer.cross_attn.project_kv
        monkeypatch.setattr(layer.cross_attn, "project_kv",
                            lambda memory, original=original: calls.append(memory.shape[0]) or original(memory))
    sources = sources_for(tokenizer, PROMPTS[:3])
    generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=8, num_beams=4))
    # Once per layer, over the 3 sources (not 3 * 4 beams): the beams get copies, not recomputations.
    assert calls == [3] * model.config.n_decoder_layers


def test_greedy_settings_that_change_nothing(model, tokenizer):
    sources = sources_for(tokenizer, PROMPTS)
    greedy = [r.token_ids for r in generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=16))]
    one_beam = GenerationConfig(max_new_tokens=16, num_beams=1, length_penalty=3.0, early_stopping=True)
    top_k_1 = GenerationConfig(max_new_tokens=16, temperature=1.5, top_k=1, seed=123)
    assert [r.token_ids for r in generate(model, tokenizer, sources, one_beam)] == greedy
    assert [r.token_ids for r in generate(model, tokenizer, sources, top_k_1)] == greedy


def test_beam_search_can_beat_greedy(model, tokenizer):
    """Beam search keeps other candidates alive; somewhere on these prompts it must find a higher score."""
    sources = sources_for(tokenizer, PROMPTS)
    greedy = generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=10))
    beams = generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=10, num_beams=5, length_penalty=0.0))
    greedy_scores = []
    for source, result in zip(sources, greedy, strict=True):
        prefix = [tokenizer.bos_id]
        total = 0.0
        for token in result.token_ids:
            total += float(reference_log_probs(model, tokenizer, source, prefix)[token])
            prefix.append(token)
        greedy_scores.append(total)
    assert any(b.score > g + 1e-3 for b, g in zip(beams, greedy_scores, strict=True))


# ---------------------------------------------------------------------------------------------------------
# Sampling


def test_the_same_seed_gives_the_same_sample(model, tokenizer):
    sources = sources_for(tokenizer, PROMPTS)

    def run(seed):
        config = GenerationConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=seed)
        return [r.token_ids for r in generate(model, tokenizer, sources, config)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(7) != [r.token_ids for r in generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=16))]


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().expand(2000, 4).contiguous()
    generator = torch.Generator().manual_seed(0)

    def drawn(**settings):
        return set(sample_next(logits, GenerationConfig(temperature=1.0, **settings), generator).tolist())

    assert drawn() == {0, 1, 2, 3}
    assert drawn(top_k=2) == {0, 1}
    assert drawn(top_p=0.7) == {0, 1}  # 0.5 < 0.7, and 0.5 + 0.3 covers it
    assert drawn(top_p=0.85) == {0, 1, 2}
    assert drawn(top_p=0.01) == {0}  # the likeliest token always stays
    assert drawn(top_k=3, top_p=0.7) == {0, 1}
    # A low temperature sharpens the distribution towards the likeliest token.
    counts = torch.bincount(sample_next(logits, GenerationConfig(temperature=0.2), generator), minlength=4)
    assert counts[0] > 0.9 * 2000


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits(tokenizer):
    processor = LogitsProcessor(tokenizer, GenerationConfig(repetition_penalty=2.0), torch.device("cpu"))
    logits = torch.zeros(1, tokenizer.vocab_size)
    logits[0, 100], logits[0, 101], logits[0, 102] = 4.0, -4.0, 4.0
    out = processor(logits, torch.tensor([[100, 101, 100]]), step=3)
    assert out[0, 100] == 2.0 and out[0, 101] == -8.0 and out[0, 102] == 4.0
    assert out[0, tokenizer.eos_id] == 0.0  # </s> is allowed...
    assert torch.isinf(out[0, banned_ids(tokenizer)]).all()  # ...reserved tokens never are
    early = LogitsProcessor(tokenizer, GenerationConfig(min_new_tokens=5), torch.device("cpu"))
    assert torch.isinf(early(torch.zeros(1, tokenizer.vocab_size), torch.zeros(1, 0, dtype=torch.long), 4)[0, 3])


def test_repetition_penalty_reduces_repeats(model, tokenizer):
    sources = sources_for(tokenizer, PROMPTS)

    def repeats(penalty):
        config = GenerationConfig(max_new_tokens=24, repetition_penalty=penalty)
        return sum(len(r.token_ids) - len(set(r.token_ids)) for r in generate(model, tokenizer, sources, config))

    assert repeats(3.0) < repeats(1.0)


def test_min_new_tokens_holds_back_eos(model, tokenizer):
    sources = sources_for(tokenizer, PROMPTS)
    results = generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=20, min_new_tokens=20))
    assert all(len(r.token_ids) == 20 and tokenizer.eos_id not in r.token_ids for r in results)


# ---------------------------------------------------------------------------------------------------------
# Stopping


def test_stop_strings_end_the_text(model, tokenizer):
    source = sources_for(tokenizer, [PROMPTS[1]])[0]
    full = generate(model, tokenizer, [source], GenerationConfig(max_new_tokens=24))[0]
    stop = full.text[6:8]
    assert len(stop) == 2 and full.text.find(stop) == 6, "the fixture should write a varied text"
    stopped = generate(model, tokenizer, [source], GenerationConfig(max_new_tokens=24, stop_strings=("zzz", stop)))[0]
    assert stopped.text == full.text[:6]
    assert stopped.finish_reason == "stop_string"
    assert stopped.token_ids == full.token_ids[:len(stopped.token_ids)] and len(stopped.token_ids) < 24
    beams = GenerationConfig(max_new_tokens=24, num_beams=2)
    beam_full = generate(model, tokenizer, [source], beams)[0].text
    stop = beam_full[4:6]
    beam_stopped = generate(model, tokenizer, [source], GenerationConfig(max_new_tokens=24, num_beams=2,
                                                                         stop_strings=(stop,)))[0]
    assert beam_stopped.text == beam_full[:beam_full.find(stop)]


def test_generation_runs_in_eval_mode_and_restores_training_mode(tokenizer):
    model = tiny_model(tokenizer, dropout=0.5).train()
    sources = sources_for(tokenizer, PROMPTS)
    first = generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=10))
    assert model.training
    assert [r.token_ids for r in generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=10))] == \
           [r.token_ids for r in first]


@pytest.mark.parametrize("settings,field", [(dict(top_p=0.0), "top_p"), (dict(temperature=-1.0), "temperature"),
                                            (dict(max_new_tokens=0), "max_new_tokens"), (dict(top_k=-1), "top_k"),
                                            (dict(repetition_penalty=0.0), "repetition_penalty"),
                                            (dict(num_beams=2, temperature=0.7), "beam search"),
                                            (dict(do_sample=True), "temperature"),
                                            (dict(num_beams=65), "num_beams .*at most 64"),
                                            (dict(stop_strings=("",)), "stop_strings")])
def test_bad_settings_are_named(settings, field):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**settings)


# ---------------------------------------------------------------------------------------------------------
# Bounds: the decoder never runs past max_seq_len positions


def never_ending(tokenizer: Tokenizer, **overrides) -> Transformer:
    """A tiny model that never writes </s>: only max_new_tokens ends its answers."""
    model = tiny_model(tokenizer, **overrides)
    with torch.no_grad():
        model.output_proj.weight[tokenizer.eos_id] = -10 * model.output_proj.weight.abs().max()
    return model


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rotary"])
def test_answers_end_where_the_models_positions_do(tokenizer, positions, monkeypatch):
    model = never_ending(tokenizer, positions=positions, max_seq_len=16)
    sources = sources_for(tokenizer, PROMPTS[:2])
    for settings in (dict(), dict(num_beams=2)):
        results = generate(model, tokenizer, sources, GenerationConfig(max_new_tokens=15, **settings))
        assert [(len(r.token_ids), r.finish_reason) for r in results] == [(15, "length")] * 2
    monkeypatch.setattr(torch, "full", lambda *args, **kwargs: pytest.fail("allocated before refusing"))
    for max_new_tokens in (16, 10**11):
        for settings in (dict(), dict(num_beams=2)):
            config = GenerationConfig(max_new_tokens=max_new_tokens, **settings)
            with pytest.raises(ValueError, match=r"max_new_tokens \(--max-tokens\) must be at most 15 .*"
                                                 rf"max_seq_len 16 .*got {max_new_tokens}"):
                generate(model, tokenizer, sources, config)
            with pytest.raises(ValueError, match="max_new_tokens"):
                next(stream(model, tokenizer, sources[0], config))


def test_beams_are_bounded_by_the_vocabulary(tokenizer):
    model = tiny_model(tokenizer, vocab_size=100)
    with pytest.raises(ValueError, match=r"num_beams \(--num-beams\) must be at most 50 .*100-token"):
        generate(model, tokenizer, [[5, 6, tokenizer.eos_id]], GenerationConfig(max_new_tokens=4, num_beams=51))


# ---------------------------------------------------------------------------------------------------------
# Streaming


class ScriptedModel(Transformer):
    """A Transformer whose decoder writes `script` whatever it reads: a way to make generation produce exact
    byte-fallback sequences and stop strings."""

    def __init__(self, config: ModelConfig, script: list[int]):
        super().__init__(config)
        self.script = script

    def log_probs(self, tgt_ids, encoder_out, src_ids, src_padding_mask=None, tgt_padding_mask=None, cache=None):
        b, t = tgt_ids.shape
        position = (cache.length if cache is not None else 0) + t - 1  # the index of the token to write next
        if cache is not None:
            cache.length += t
        logits = torch.zeros(b, t, self.config.vocab_size)
        logits[:, :, self.script[min(position, len(self.script) - 1)]] = 10.0
        return logits.log_softmax(-1)

    def next_token_log_probs(self, tgt_ids, encoder_out, src_ids, src_padding_mask=None, cache=None):
        return self.log_probs(tgt_ids, encoder_out, src_ids, src_padding_mask, cache=cache)[:, -1]


def scripted(tokenizer: Tokenizer, text: str, end: bool = True) -> ScriptedModel:
    script = tokenizer.encode(text) + ([tokenizer.eos_id] if end else [])
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, n_encoder_layers=1,
                         n_decoder_layers=1, d_ff=32, dropout=0.0, max_seq_len=64)
    return ScriptedModel(config, script).eval()


def test_streamed_pieces_never_show_half_a_character(tokenizer):
    ids = tokenizer.encode(MULTI_BYTE)
    assert sum(tokenizer.id_to_piece(i).startswith("<0x") for i in ids) >= 10, "the text should need byte fallback"
    model = scripted(tokenizer, MULTI_BYTE)
    source = sources_for(tokenizer, ["x"])[0]
    config = GenerationConfig(max_new_tokens=60)
    pieces = list(stream(model, tokenizer, source, config))
    assert "".join(pieces) == MULTI_BYTE == generate(model, tokenizer, [source], config)[0].text
    assert len(pieces) > 10
    assert not any("\ufffd" in piece for piece in pieces)
    assert "日" in pieces and "😀" in pieces  # three or four byte pieces in, one character out


def test_a_row_shows_a_character_once_its_last_byte_is_in(tokenizer):
    row = Row(tokenizer, track_text=True)
    sun = tokenizer.encode("日")  # not in the training text: three byte pieces
    assert len(sun) == 3
    shown = []
    for token in sun:
        row.add(token)
        shown.append(row.settled_text())
    assert shown == ["", "", "日"]


def test_streaming_holds_back_a_possible_stop_string(tokenizer):
    """"Mon" could begin "Monkey": it waits until "Monday" shows it does not, and "Monkey" itself never shows."""
    model = scripted(tokenizer, "Oh great, another Monday. Monkeys!\n\nlater")
    source = sources_for(tokenizer, ["x"])[0]
    config = GenerationConfig(max_new_tokens=60, stop_strings=("Monkey", "\n\n"))
    pieces = list(stream(model, tokenizer, source, config))
    assert "".join(pieces) == "Oh great, another Monday. " == generate(model, tokenizer, [source], config)[0].text
    assert len(pieces) > 3


@pytest.mark.parametrize("settings", [dict(), dict(temperature=1.0, seed=3), dict(temperature=0.8, top_k=20, seed=5),
                                      dict(stop_strings=("e",)), dict(num_beams=3), dict(repetition_penalty=1.3)])
def test_streamed_pieces_join_to_the_generated_text(model, tokenizer, settings):
    config = GenerationConfig(max_new_tokens=24, **settings)
    for source in sources_for(tokenizer, PROMPTS):
        assert "".join(stream(model, tokenizer, source, config)) == generate(model, tokenizer, [source], config)[0].text


def test_hypotheses_length_penalty_and_early_stopping():
    hypotheses = Hypotheses(num_beams=2, length_penalty=1.0, early_stopping=False)
    hypotheses.add([5, 3], -2.0, "eos")  # score -1.0
    assert not hypotheses.is_done(-0.1, 1)  # fewer than num_beams hypotheses
    hypotheses.add([5, 6, 7, 3], -2.0, "eos")  # score -0.5
    hypotheses.add([9, 3], -6.0, "eos")  # score -3.0: not among the best two
    assert sorted(score for score, _, _ in hypotheses.items) == [-1.0, -0.5]
    assert hypotheses.best()[1] == [5, 6, 7, 3]
    assert not hypotheses.is_done(-1.8, 2)  # a running beam at -0.9 could still beat -1.0
    assert hypotheses.is_done(-2.2, 2)  # at -1.1 it cannot
    assert Hypotheses(2, 0.0, True).is_done(0.0, 1) is False
    eager = Hypotheses(num_beams=1, length_penalty=0.0, early_stopping=True)
    eager.add([4, 3], -9.0, "eos")
    assert eager.is_done(-0.1, 1)  # early stopping: num_beams hypotheses are enough


def test_bytes_that_never_make_a_character_are_shown_at_once(tokenizer):
    """Invalid UTF-8 from a model (a lead byte twice, a stray continuation byte) is settled as U+FFFD right away,
    while a character's first bytes still wait for the rest."""
    pieces = {tokenizer.id_to_piece(i): i for i in range(tokenizer.vocab_size)}
    byte = {b: pieces[f"<0x{b:02X}>"] for b in (0xDE, 0x97, 0xE6)}
    char = bytes([0xDE, 0x97]).decode()
    row = Row(tokenizer, track_text=True)
    row.add(byte[0xDE])
    assert row.settled_text() == ""  # 0xDE starts a two-byte character
    row.add(byte[0xDE])
    assert row.settled_text() == "\ufffd"  # the first can no longer complete; the second still might
    row.add(byte[0x97])
    assert row.settled_text() == "\ufffd" + char  # DE 97 is a character
    row.add(byte[0x97])
    assert row.settled_text() == "\ufffd" + char + "\ufffd"  # a stray continuation byte
    row.add(byte[0xE6])
    assert row.settled_text() == "\ufffd" + char + "\ufffd"
