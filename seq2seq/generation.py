"""Text generation: batched `generate()` and streaming `stream()` over a model and its tokenizer.

Decoding strategies, each a `GenerationConfig` setting:
- greedy (temperature 0, the default), or sampling with `temperature`, `top_k` and `top_p` (nucleus), from a
  `torch.Generator` seeded with `seed`, so one seed gives one sample;
- `repetition_penalty` (CTRL, Keskar et al., 2019, applied to log-probabilities): the log-probability of a token
  already generated is multiplied by the penalty (it is negative, so a penalty above 1 makes the token less likely);
- beam search (`num_beams` > 1) with Hugging Face's `length_penalty` and `early_stopping` (see `Hypotheses`);
- stopping: </s>, `max_new_tokens`, and `stop_strings` (the text ends before the first one).

Bounds, checked before anything is allocated: the decoder never runs past the model's `max_seq_len` positions,
whatever its position scheme (learned embeddings end there; sinusoidal and rotary ones would go on, into
positions the model never trained on), and <s> takes the first, so `max_new_tokens` is at most max_seq_len - 1
(`max_new_tokens_limit`); `num_beams` is at most 64 (`MAX_NUM_BEAMS`). Larger values are a ValueError naming
the setting and the limit, never a silent cut.

Every search reads the model through one contract, `Transformer.next_token_log_probs`, whatever extensions the
model has. The encoder runs once per batch. The decoder runs one position per step with a `DecoderCache`: each layer's
cross-attention keys/values are computed at the first step and kept, its self-attention keys/values grow by
one position per step. Beam search computes the first step once per source, then selects each source's row once
per beam (`DecoderCache.reorder` with repeated rows, nothing recomputed) and the surviving beams each step.
Rows that finish leave the batch, so the longest answer does not make the others pay.

`compile=True` (greedy decoding and sampling) runs each step through `torch.compile` instead: a
`StaticDecoderCache` keeps every tensor's shape fixed for the whole decoding (preallocated keys/values, the
position as a tensor, sources padded to a multiple of 32, finished rows decoded on and ignored), so one
compiled graph, with the weights frozen into it, serves every step. Compiling takes tens of seconds per batch
size and source length bucket (`compiled_step`); on CPU it then decodes several times faster, because an eager
step at these sizes is mostly the fixed cost of ~100 PyTorch calls. See docs/generation.md.

Tokens the tokenizer reserves (pad, <unk>, <s>, <sep>, tones, task markers, sentinels) are never generated;
</s> is, once `min_new_tokens` are out.

Shapes: b rows in the batch, t tokens so far, V vocabulary, k beams.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from seq2seq.model import ModelConfig, Transformer
from seq2seq.padding import right_pad
from seq2seq.runtime import eval_mode, unwrap

FinishReason = Literal["eos", "stop_string", "length"]
REPLACEMENT_CHARACTER = "\ufffd"  # what SentencePiece shows for the bytes of a character not yet complete
# Beam search keeps num_beams rows per source and looks at 2 * num_beams candidates each step; far fewer beams
# already find the best hypotheses a small model has (Hugging Face's examples use 4 to 10).
MAX_NUM_BEAMS = 64


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # </s> cannot come before this many new tokens
    temperature: float = 0.0  # 0: greedy
    do_sample: bool | None = None  # None: sample exactly when temperature > 0
    top_k: int = 0  # sample among the k most likely tokens; 0: all
    top_p: float = 1.0  # sample among the most likely tokens whose probabilities sum to top_p; 1: all
    repetition_penalty: float = 1.0  # 1: off
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = sum of log-probs / length ** length_penalty
    early_stopping: bool = False  # beam search: stop once num_beams hypotheses have ended
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None  # None: a fresh random seed per call
    use_cache: bool = True  # False re-runs the decoder over the whole prefix each step (for tests, benchmarks)
    compile: bool = False  # greedy/sampling with the cache: compiled steps (module docstring); beams: ignored

    def __post_init__(self) -> None:
        self.stop_strings = tuple(self.stop_strings)
        for name, low in (("max_new_tokens", 1), ("min_new_tokens", 0), ("top_k", 0), ("num_beams", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if any(not isinstance(stop, str) or not stop for stop in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if self.do_sample and self.temperature == 0:
            raise ValueError("do_sample needs a temperature > 0")
        if self.sampling and self.num_beams > 1:
            raise ValueError("beam search does not sample: use temperature 0 with num_beams > 1")
        if self.num_beams > MAX_NUM_BEAMS:
            raise ValueError(f"num_beams (--num-beams) must be at most {MAX_NUM_BEAMS}, got {self.num_beams}")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0 if self.do_sample is None else self.do_sample


@dataclass
class GenerationResult:
    token_ids: list[int]  # the generated ids, without the leading <s>; ending with </s> when finish_reason is eos
    text: str  # their text, cut before the first stop string
    finish_reason: FinishReason
    score: float | None = None  # beam search: the hypothesis' length-penalised log-probability


def generate(
    model: Transformer,
    tokenizer,
    sources: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
) -> list[GenerationResult]:
    """One answer per source (encoder input ids, e.g. `build_source(...).ids`), in order."""
    config = config or GenerationConfig()
    check_fits(unwrap(model), config)
    rows = [Row(tokenizer, config.stop_strings) for _ in sources]
    if not rows:
        return []
    search = beam_search if config.num_beams > 1 else greedy_or_sampling
    for _ in search(unwrap(model), tokenizer, sources, config, rows):
        pass
    return [row.result() for row in rows]


def stream(
    model: Transformer,
    tokenizer,
    source_ids: Sequence[int],
    config: GenerationConfig | None = None,
) -> Iterator[str]:
    """Yield one answer's text piece by piece as it is generated. The pieces join to exactly
    `generate(model, tokenizer, [source_ids], config)[0].text`: a character spelled as several byte-fallback
    pieces appears whole once its last byte is out, and text that may be the start of a stop string waits until
    it is known not to be. Beam search knows its answer only at the end: it comes as one piece."""
    config = config or GenerationConfig()
    check_fits(unwrap(model), config)
    if config.num_beams > 1:
        text = generate(model, tokenizer, [source_ids], config)[0].text
        if text:
            yield text
        return
    row = Row(tokenizer, config.stop_strings, track_text=True)
    shown = 0
    for _ in greedy_or_sampling(unwrap(model), tokenizer, [source_ids], config, [row]):
        settled = row.settled_text()
        if len(settled) > shown:
            yield settled[shown:]
            shown = len(settled)
    text = row.result().text
    if len(text) > shown:
        yield text[shown:]


def max_new_tokens_limit(model_config: ModelConfig) -> int:
    """The most tokens one answer may have: the decoder reads <s> and then each token but the last, and never
    runs past max_seq_len positions (module docstring)."""
    return model_config.max_seq_len - 1


def check_fits(model: Transformer, config: GenerationConfig) -> None:
    """Raise ValueError, naming the setting, when `config` asks more of `model` than its positions and
    vocabulary allow."""
    limit = max_new_tokens_limit(model.config)
    if config.max_new_tokens > limit:
        raise ValueError(f"max_new_tokens (--max-tokens) must be at most {limit} for this model (its decoder has "
                         f"max_seq_len {model.config.max_seq_len} positions, the first for <s>), got "
                         f"{config.max_new_tokens}")
    if 2 * config.num_beams > model.config.vocab_size:
        raise ValueError(f"num_beams (--num-beams) must be at most {model.config.vocab_size // 2} for this "
                         f"model's {model.config.vocab_size}-token vocabulary, got {config.num_beams}")


# ---------------------------------------------------------------------------------------------------------
# One sequence's tokens and text


class Row:
    """One answer being generated: its token ids, why it ended and, with `track_text`, its text so far.

    The text is decoded again from all ids after each token (SentencePiece's C++ decoder takes microseconds for
    a few hundred ids), which keeps byte-fallback characters exact without mirroring SentencePiece's rules."""

    def __init__(self, tokenizer, stop_strings: Sequence[str] = (), track_text: bool = False):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.track_text = track_text or bool(self.stop_strings)
        self.ids: list[int] = []
        self.text = ""
        self.finish_reason: FinishReason = "length"
        self.finished = False
        self.score: float | None = None

    def add(self, token: int) -> bool:
        """Append a generated token; True when the row has now ended (</s> or a stop string)."""
        self.ids.append(token)
        if token == self.tokenizer.eos_id:
            self.finish("eos")
            return True
        if self.track_text:
            self.text = self.tokenizer.decode(self.ids)
            if self.stop_strings and self.cut_at_stop_string():
                self.finish("stop_string")
                return True
        return False

    def cut_at_stop_string(self) -> bool:
        found = [i for i in (self.text.find(stop) for stop in self.stop_strings) if i >= 0]
        if found:
            self.text = self.text[:min(found)]
        return bool(found)

    def finish(self, reason: FinishReason) -> None:
        self.finish_reason = reason
        self.finished = True

    def settled_text(self) -> str:
        """The part of the text that no later token can change."""
        text = self.text
        if self.finished:
            return text
        waiting = incomplete_utf8_tail(self.tokenizer, self.ids)  # the first bytes of a character, shown as U+FFFD
        if waiting and text.endswith(REPLACEMENT_CHARACTER * waiting):
            text = text[:-waiting]
        held = 0
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:n]):
                    held = n
                    break
        return text[:len(text) - held]

    def complete(self, ids: list[int], reason: FinishReason, score: float) -> None:
        """Set the whole answer at once (beam search knows it only at the end). Stop strings cut its text;
        its token ids stay whole."""
        self.ids, self.score, self.track_text = list(ids), score, True
        self.text = self.tokenizer.decode(self.ids)
        self.finish("stop_string" if self.stop_strings and self.cut_at_stop_string() else reason)

    def result(self) -> GenerationResult:
        if not self.track_text:
            self.text = self.tokenizer.decode(self.ids)
        return GenerationResult(list(self.ids), self.text, self.finish_reason, self.score)


def incomplete_utf8_tail(tokenizer, ids: Sequence[int]) -> int:
    """How many of the last tokens are byte pieces that begin a UTF-8 character still missing bytes (0-3): the
    text shows each as U+FFFD until the character is complete. Invalid bytes are settled: they never complete."""
    piece_of = getattr(tokenizer, "id_to_piece", None)
    tail: list[int] = []
    for token in reversed(ids[-3:] if piece_of is not None else ()):
        piece = piece_of(token)
        if not (len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")):
            break
        tail.insert(0, int(piece[3:5], 16))
    for k in range(1, len(tail) + 1):
        byte = tail[-k]
        if byte & 0xC0 == 0x80:  # a continuation byte: its lead is further back
            continue
        needed = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
        return k if k < needed else 0
    return 0


# ---------------------------------------------------------------------------------------------------------
# The model side: encoder output, decoder cache, next-token log-probabilities


class DecoderState:
    """The encoder output and decoder cache of a batch whose rows can be dropped, reordered and expanded."""

    def __init__(self, model: Transformer, src_ids: Tensor, src_padding_mask: Tensor | None, use_cache: bool):
        self.model = model
        self.src_ids = src_ids
        self.src_padding_mask = src_padding_mask
        self.encoder_out = model.encode(src_ids, src_padding_mask)  # (b, s, D)
        self.cache = model.new_cache() if use_cache else None

    def next_log_probs(self, tgt_ids: Tensor) -> Tensor:
        """Log-probabilities (b, V) of the position after `tgt_ids` (b, t). With the cache only the last id is new."""
        new_ids = tgt_ids if self.cache is None else tgt_ids[:, -1:]
        return self.model.next_token_log_probs(new_ids, self.encoder_out, self.src_ids, self.src_padding_mask,
                                               cache=self.cache)

    def select(self, index: Tensor) -> None:
        """Keep batch rows `index`, in that order (a row may repeat: one row per beam)."""
        if self.cache is not None:
            self.cache.reorder(index)
        self.encoder_out = self.encoder_out.index_select(0, index)
        self.src_ids = self.src_ids.index_select(0, index)
        if self.src_padding_mask is not None:
            self.src_padding_mask = self.src_padding_mask.index_select(0, index)


class LogitsProcessor:
    """Turns the model's next-token log-probabilities into the scores a search picks from: no reserved tokens,
    no </s> before `min_new_tokens`, the repetition penalty. In place: the scores are fresh from the model."""

    def __init__(self, tokenizer, config: GenerationConfig, device: torch.device):
        vocab = range(tokenizer.vocab_size)
        banned = [i for i in vocab if tokenizer.is_special(i) and i != tokenizer.eos_id]
        self.banned = torch.tensor(banned, dtype=torch.long, device=device)
        self.banned_before_min = torch.tensor(banned + [tokenizer.eos_id], dtype=torch.long, device=device)
        self.min_new_tokens = config.min_new_tokens
        self.repetition_penalty = config.repetition_penalty

    def __call__(self, scores: Tensor, generated: Tensor, step: int) -> Tensor:
        """scores (b, V): log-probabilities; generated (b, step): the ids generated so far in each row."""
        if self.repetition_penalty != 1.0 and generated.shape[1]:
            seen = scores.gather(1, generated)
            seen = torch.where(seen > 0, seen / self.repetition_penalty, seen * self.repetition_penalty)
            scores.scatter_(1, generated, seen)
        banned = self.banned_before_min if step < self.min_new_tokens else self.banned
        return scores.index_fill_(1, banned, -math.inf)


def sample_next(logits: Tensor, config: GenerationConfig, generator: torch.Generator) -> Tensor:
    """One token per row (b,) drawn from softmax(logits / temperature), restricted to top_k and top_p."""
    logits = logits.float() / config.temperature
    candidates = None  # vocabulary ids of the columns of `logits` once cut to the top k; None: all of them
    if config.top_k and config.top_k < logits.shape[-1]:
        logits, candidates = logits.topk(config.top_k, dim=-1)  # sorted, descending
    if config.top_p < 1.0:
        if candidates is None:
            logits, candidates = logits.sort(dim=-1, descending=True)
        probs = logits.softmax(-1)
        # Drop a token when the tokens ranked above it already hold top_p; the most likely one always stays.
        mass_before = probs.cumsum(-1) - probs
        logits = logits.masked_fill(mass_before >= config.top_p, -math.inf)
    choice = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (b, 1)
    if candidates is not None:
        choice = candidates.gather(-1, choice)
    return choice.squeeze(-1)


def new_generator(config: GenerationConfig, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    return generator


# ---------------------------------------------------------------------------------------------------------
# Greedy decoding and sampling


class StaticDecoderState:
    """`DecoderState` for compiled steps: the source padded to a multiple of `SOURCE_BUCKET` (so sources of
    similar lengths share a compiled graph) and a `StaticDecoderCache` of `capacity` positions. Rows that
    `select` drops stay in the compiled batch, decoding on unread; the caller sees only the rows it kept."""

    SOURCE_BUCKET = 32

    def __init__(self, model: Transformer, src_ids: Tensor, src_padding_mask: Tensor | None, capacity: int):
        b, s = src_ids.shape
        padded = -(-s // self.SOURCE_BUCKET) * self.SOURCE_BUCKET
        mask = torch.zeros(b, padded, dtype=torch.bool, device=src_ids.device)
        mask[:, s:] = True
        if src_padding_mask is not None:
            mask[:, :s] = src_padding_mask
        src_ids = torch.cat([src_ids, src_ids.new_zeros(b, padded - s)], dim=1)  # pad ids, masked out
        self.encoder_out = model.encode(src_ids, mask)
        self.src_padding_mask = mask
        self.src_ids = src_ids
        self.cache = model.new_static_cache(self.encoder_out, capacity)
        self.step = compiled_step(model)
        self.rows = torch.arange(b, device=src_ids.device)  # the compiled batch's rows that the caller still has
        self.last_ids = torch.zeros(b, 1, dtype=torch.long, device=src_ids.device)
        self.first_step = True

    def next_log_probs(self, tgt_ids: Tensor) -> Tensor:
        self.last_ids[self.rows] = tgt_ids[:, -1:]  # dropped rows keep their last id
        # Only the first step can compile (the shapes never change afterwards). Freezing is read outside the
        # options that torch.compile passes to Inductor, so it is patched in around that step (~40 us, not paid on
        # the others), with the autotuner's tables of timings (printed to stderr) off.
        patch = (torch._inductor.config.patch(freezing=True, autotune_num_choices_displayed=0) if self.first_step
                 else nullcontext())
        self.first_step = False
        with patch:
            log_probs = self.step(self.last_ids, self.encoder_out, self.src_ids, self.src_padding_mask,
                                  cache=self.cache)
        return log_probs if len(self.rows) == len(log_probs) else log_probs.index_select(0, self.rows)

    def select(self, index: Tensor) -> None:
        """Keep rows `index` of those kept so far, in order (no repeats: this is not for beam search)."""
        self.rows = self.rows.index_select(0, index)


_compiled_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_step(model: Transformer):
    """`model.next_token_log_probs` through `torch.compile`, one per model, its weights frozen in as constants (so it is
    compiled again if they change). On CPU Inductor's C++ GEMM templates replace MKL's, which at one row per
    step spend most of their time starting up. Each new batch size, source bucket or cache capacity compiles
    again (about 30 s each for the model of bench/bench_generate.py on 2 cores; cached on disk)."""
    weights = tuple((p.data_ptr(), p._version) for p in model.parameters())
    known = _compiled_steps.get(model)
    if known is not None and known[0] == weights:
        return known[1]
    options = {"max_autotune_gemm": True}
    if next(model.parameters()).device.type == "cpu":
        # Only the C++ templates are timed (timing MKL too adds ~20 s of compiling and never won here); a
        # matrix product they cannot do falls back to ATen.
        options.update(max_autotune_gemm_backends="CPP", autotune_fallback_to_aten=True)
    step = torch.compile(model.next_token_log_probs, fullgraph=True, dynamic=False, options=options)
    _compiled_steps[model] = (weights, step)
    return step


def decoding_capacity(model: Transformer, steps: int) -> int:
    """Static cache positions for `steps` steps, rounded up to a multiple of 64 so that nearby max_new_tokens
    share a compiled graph, and never past max_seq_len."""
    return min(-(-steps // 64) * 64, model.config.max_seq_len)


@torch.inference_mode()
def greedy_or_sampling(model: Transformer, tokenizer, sources: Sequence[Sequence[int]], config: GenerationConfig,
                       rows: list[Row]) -> Iterator[None]:
    """Greedy decoding or sampling of every source into its `Row`; yields after each step. (Used as a
    generator, `torch.inference_mode` is entered around each step only, not while the caller runs.)"""
    device = next(model.parameters()).device
    with eval_mode(model):
        src_ids, src_padding_mask = right_pad(sources, tokenizer.pad_id, device)
        steps = config.max_new_tokens  # within the model's positions: `check_fits`
        if config.compile and config.use_cache:
            state = StaticDecoderState(model, src_ids, src_padding_mask, decoding_capacity(model, steps))
        else:
            state = DecoderState(model, src_ids, src_padding_mask, config.use_cache)
        process = LogitsProcessor(tokenizer, config, device)
        generator = new_generator(config, device) if config.sampling else None
        tokens = torch.full((len(rows), 1 + steps), tokenizer.bos_id, dtype=torch.long, device=device)  # (b, 1+n)
        live = list(range(len(rows)))  # batch row i is rows[live[i]]
        for step in range(steps):
            scores = process(state.next_log_probs(tokens[:, :step + 1]), tokens[:, 1:step + 1], step)  # (b, V)
            next_ids = sample_next(scores, config, generator) if generator is not None else scores.argmax(-1)
            tokens[:, step + 1] = next_ids
            ended = [i for i, token in enumerate(next_ids.tolist()) if rows[live[i]].add(token)]
            yield
            if ended:
                keep = [i for i in range(len(live)) if i not in ended]
                if not keep:
                    return
                index = torch.tensor(keep, device=device)
                state.select(index)
                tokens = tokens.index_select(0, index)
                live = [live[i] for i in keep]


# ---------------------------------------------------------------------------------------------------------
# Beam search


class Hypotheses:
    """The best `num_beams` finished hypotheses of one source, as in Hugging Face's `BeamHypotheses`.

    A hypothesis' score is its summed log-probability divided by length ** length_penalty, the length being
    the number of generated tokens it holds (</s> included): length_penalty > 0 favours longer answers, < 0
    shorter ones. The search of a source is done when it holds num_beams hypotheses and either
    early_stopping is on, or no running beam can beat the worst of them: the best running beam's score
    at its current length is no better (a heuristic: it ignores that a longer beam divides by more)."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping: bool):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.items: list[tuple[float, list[int], FinishReason]] = []  # (score, token ids, finish reason)

    def score(self, sum_logprobs: float, length: int) -> float:
        return sum_logprobs / length ** self.length_penalty

    def add(self, ids: list[int], sum_logprobs: float, reason: FinishReason) -> None:
        self.items.append((self.score(sum_logprobs, len(ids)), ids, reason))
        if len(self.items) > self.num_beams:
            self.items.remove(min(self.items, key=lambda item: item[0]))

    def is_done(self, best_running_sum_logprobs: float, length: int) -> bool:
        if len(self.items) < self.num_beams:
            return False
        if self.early_stopping:
            return True
        worst = min(score for score, _, _ in self.items)
        return worst >= self.score(best_running_sum_logprobs, length)

    def best(self) -> tuple[float, list[int], FinishReason]:
        return max(self.items, key=lambda item: item[0])


@torch.inference_mode()
def beam_search(model: Transformer, tokenizer, sources: Sequence[Sequence[int]], config: GenerationConfig,
                rows: list[Row]) -> Iterator[None]:
    """Beam search of every source; the best hypothesis goes into its `Row`. Yields after each step."""
    device = next(model.parameters()).device
    k, eos = config.num_beams, tokenizer.eos_id
    with eval_mode(model):
        src_ids, src_padding_mask = right_pad(sources, tokenizer.pad_id, device)
        state = DecoderState(model, src_ids, src_padding_mask, config.use_cache)
        process = LogitsProcessor(tokenizer, config, device)
        hypotheses = [Hypotheses(k, config.length_penalty, config.early_stopping) for _ in rows]
        live = list(range(len(rows)))  # the batch holds the beams of rows[live[0]], then rows[live[1]], ...
        sequences = torch.full((len(rows), 1), tokenizer.bos_id, dtype=torch.long, device=device)  # (b*beams, t)
        beam_scores = torch.zeros(len(rows), device=device)  # summed log-probs of each running beam
        for step in range(config.max_new_tokens):
            scores = process(state.next_log_probs(sequences), sequences[:, 1:], step)
            log_probs = scores.log_softmax(-1) + beam_scores[:, None]  # (b*beams, V): renormalised after the bans
            beams, vocab = sequences.shape[0] // len(live), log_probs.shape[-1]  # 1 beam at the first step
            top_scores, top_index = log_probs.view(len(live), beams * vocab).topk(2 * k, dim=1)  # (b, 2k)
            origin, new_scores, new_tokens, still_live = [], [], [], []
            for j, (scores, flat) in enumerate(zip(top_scores.tolist(), top_index.tolist(), strict=True)):
                row_origin, row_scores, row_tokens = [], [], []
                for rank, (score, index) in enumerate(zip(scores, flat, strict=True)):
                    beam, token = divmod(index, vocab)
                    if token == eos:
                        if rank < k:  # as in HF: </s> ends a hypothesis only from within the top k
                            ids = sequences[j * beams + beam, 1:].tolist() + [eos]
                            hypotheses[live[j]].add(ids, score, "eos")
                        continue
                    row_origin.append(j * beams + beam)
                    row_scores.append(score)
                    row_tokens.append(token)
                    if len(row_tokens) == k:
                        break
                if hypotheses[live[j]].is_done(row_scores[0], step + 1):
                    continue  # this source is finished: its beams leave the batch
                still_live.append(live[j])
                origin += row_origin
                new_scores += row_scores
                new_tokens += row_tokens
            yield
            if not still_live:
                break
            index = torch.tensor(origin, device=device)
            state.select(index)  # at the first step, each source's one row becomes its k beams
            sequences = torch.cat([sequences.index_select(0, index),
                                   torch.tensor(new_tokens, device=device)[:, None]], dim=1)
            beam_scores = torch.tensor(new_scores, device=device)
            live = still_live
        else:  # out of steps: the running beams become hypotheses too
            for j, i in enumerate(live):
                for beam in range(k):
                    hypotheses[i].add(sequences[j * k + beam, 1:].tolist(), beam_scores[j * k + beam].item(),
                                      "length")
        for row, found in zip(rows, hypotheses, strict=True):
            score, ids, reason = found.best()
            row.complete(ids, reason, score)
