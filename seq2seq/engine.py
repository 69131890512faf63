"""The serving engine: many requests decoded at once with continuous batching.

One thread owns the model. Requests wait in a bounded queue; at every step the engine admits waiting requests into
free slots of the running batch (their sources encoded together, once), runs one decoder step over every running
request (`Transformer.next_token_log_probs` with a `BatchDecoderCache`, whose rows sit at different positions),
picks each request's next token with that request's own settings and random generator, and drops requests that
finished, hit a stop string, or were cancelled (their client went away), freeing their slots for the next step.
Each request keeps its own self-attention and cross-attention cache rows.

Text comes out through `generation.Row`, as in `generate()`: a stop string is never emitted, even split across
tokens, and a character spelled as several byte pieces comes out whole. Events go to each request's `sink` (a
callable the web layer passes), from the engine thread.

Shapes: b running requests, s longest source in the batch, V vocabulary.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from seq2seq.generation import GenerationConfig, LogitsProcessor, Row, max_new_tokens_limit, sample_next
from seq2seq.model.cache import BatchDecoderCache
from seq2seq.padding import right_pad
from seq2seq.runtime import unwrap


class QueueFull(RuntimeError):
    """The waiting queue is full: the caller should retry later (HTTP 503 with Retry-After)."""


@dataclass
class Settings:
    """One request's decoding settings (OpenAI's names)."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's log-probability and the top k

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                top_k=self.top_k, repetition_penalty=self.repetition_penalty,
                                stop_strings=self.stop, seed=self.seed)


@dataclass
class TokenInfo:
    """One generated token: its id, piece, log-probability (of the model's distribution, before temperature and
    penalties) and, when asked, the top alternatives as (id, log-probability)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What a request's sink receives: a text delta with the tokens it came from, then one event with
    `finish_reason` set ("stop" or "length"), or with `error` set."""

    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Request:
    """A request in the engine: its encoder input, settings and where its events go."""

    def __init__(self, source_ids: Sequence[int], settings: Settings, sink: Callable[[Event], None]):
        self.source_ids = list(source_ids)
        self.settings = settings
        self.sink = sink
        self.cancelled = threading.Event()
        self.submitted = time.monotonic()

    def cancel(self) -> None:
        """The client has gone: the engine drops the request at its next step."""
        self.cancelled.set()


class Slot:
    """A running request's decoding state beside its batch row."""

    def __init__(self, request: Request, tokenizer, device: torch.device):
        self.request = request
        config = request.settings.generation_config()
        self.config = config
        self.row = Row(tokenizer, config.stop_strings, track_text=True)
        self.processor = LogitsProcessor(tokenizer, config, device)
        self.generator = None
        if config.sampling:
            self.generator = torch.Generator(device=device)
            if config.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(config.seed)
        self.shown = 0  # characters of the text already sent
        self.pending: list[TokenInfo] = []  # tokens whose text is held back (stop-string prefix, partial UTF-8)


class Engine:
    """Continuous batching over one model. `submit` from any thread; `start` runs the loop in a daemon thread.

    max_batch: requests decoded together at most; max_queue: requests waiting at most (then `QueueFull`);
    max_new_tokens: the most a request may ask for (also bounded by the model's positions)."""

    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 64, max_new_tokens: int | None = None,
                 on_step: Callable[[int, int], None] | None = None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch} and {max_queue}")
        self.model = unwrap(model).eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        config = self.model.config
        self.max_source_len = config.max_seq_len
        limit = max_new_tokens_limit(config)  # the decoder never runs past the model's positions
        self.max_new_tokens = min(limit, max_new_tokens or limit)
        self.device = next(self.model.parameters()).device
        self.waiting: queue.Queue[Request] = queue.Queue(maxsize=max_queue)
        self.on_step = on_step  # called after each step with (running, waiting)
        self.slots: list[Slot] = []
        self.cache = BatchDecoderCache(config.n_decoder_layers, capacity=self.max_new_tokens + 1)
        self.encoder_out: Tensor | None = None  # (b, s, D)
        self.src_ids: Tensor | None = None  # (b, s)
        self.src_padding_mask: Tensor | None = None  # (b, s)
        self.last_ids: Tensor | None = None  # (b,)
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    # -- the caller's side -------------------------------------------------------------------------------------

    def check(self, source_ids: Sequence[int], settings: Settings) -> None:
        """Raise ValueError naming the field for a request the engine cannot serve."""
        if not source_ids:
            raise ValueError("prompt: empty")
        if len(source_ids) > self.max_source_len:
            raise PromptTooLong(f"prompt: {len(source_ids)} tokens, but the model reads at most "
                                f"{self.max_source_len}")
        if settings.max_tokens > self.max_new_tokens:
            raise ValueError(f"max_tokens: at most {self.max_new_tokens} for this model, got {settings.max_tokens}")
        settings.generation_config()  # its own checks name the setting

    def submit(self, source_ids: Sequence[int], settings: Settings, sink: Callable[[Event], None]) -> Request:
        self.check(source_ids, settings)
        request = Request(source_ids, settings, sink)
        try:
            self.waiting.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self.max_queue} requests are waiting already") from None
        self.wake.set()
        return request

    @property
    def running(self) -> int:
        return len(self.slots)

    def start(self) -> Engine:
        self.thread = threading.Thread(target=self.loop, name="seq2seq-engine", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    # -- the engine thread -------------------------------------------------------------------------------------

    def loop(self) -> None:
        while not self.stopped.is_set():
            if not self.slots and self.waiting.empty():
                self.wake.wait(timeout=0.5)
                self.wake.clear()
                continue
            try:
                self.step()
            except Exception as error:  # noqa: BLE001 - a failed step fails its requests, never the server
                self.fail_all(f"{type(error).__name__}: {error}")
            if self.on_step is not None:
                self.on_step(len(self.slots), self.waiting.qsize())

    @torch.inference_mode()
    def step(self) -> None:
        """Admit, decode one token for every running request, emit, and drop the finished."""
        self.drop([i for i, slot in enumerate(self.slots) if slot.request.cancelled.is_set()])
        self.admit()
        if not self.slots:
            return
        log_probs = self.model.next_token_log_probs(self.last_ids[:, None], self.encoder_out, self.src_ids,
                                                    self.src_padding_mask, cache=self.cache)  # (b, V)
        next_ids = []
        finished = []
        for i, slot in enumerate(self.slots):
            token = self.pick(slot, log_probs[i])
            next_ids.append(token)
            info = TokenInfo(token, float(log_probs[i, token]))
            if slot.request.settings.logprobs:
                top = log_probs[i].topk(slot.request.settings.logprobs)
                info.top = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            ended = slot.row.add(token)
            out_of_room = len(slot.row.ids) >= slot.config.max_new_tokens
            if not ended and token != self.tokenizer.eos_id:
                slot.pending.append(info)
            self.emit(slot, ended or out_of_room)
            if ended or out_of_room:
                finished.append(i)
        self.last_ids = torch.tensor(next_ids, device=self.device)
        self.drop(finished)

    def pick(self, slot: Slot, log_probs: Tensor) -> int:
        scores = log_probs.clone()[None]
        generated = torch.tensor([slot.row.ids], dtype=torch.long, device=self.device)
        scores = slot.processor(scores, generated, len(slot.row.ids))
        if slot.generator is None:
            return int(scores.argmax(-1))
        return int(sample_next(scores, slot.config, slot.generator))

    def emit(self, slot: Slot, done: bool) -> None:
        """Send the text no later token can change, with the tokens it came from; at the end, the rest."""
        text = slot.row.text if done else slot.row.settled_text()
        delta, tokens = text[slot.shown:], []
        if delta or done:
            tokens, slot.pending = slot.pending, []
        slot.shown = len(text)
        request = slot.request
        if done:
            reason = "length" if slot.row.finish_reason == "length" else "stop"  # </s> or a stop string: "stop"
            request.sink(Event(delta, tokens, reason, prompt_tokens=len(request.source_ids),
                               completion_tokens=len(slot.row.ids)))
        elif delta:
            request.sink(Event(delta, tokens))

    def admit(self) -> None:
        """Move waiting requests into free slots; their sources are encoded together."""
        new: list[Request] = []
        while len(self.slots) + len(new) < self.max_batch:
            try:
                request = self.waiting.get_nowait()
            except queue.Empty:
                break
            if request.cancelled.is_set():
                continue
            new.append(request)
        slots = []
        for request in new:
            try:
                slots.append(Slot(request, self.tokenizer, self.device))
            except Exception as error:  # noqa: BLE001 - a request that cannot start fails alone
                request.sink(Event(error=f"{type(error).__name__}: {error}"))
        new = [slot.request for slot in slots]
        if not new:
            return
        model = self.model
        try:  # nothing of the batch changes until the new requests are encoded
            src_ids, src_padding_mask = right_pad([r.source_ids for r in new], self.tokenizer.pad_id, self.device)
            if src_padding_mask is None:
                src_padding_mask = torch.zeros_like(src_ids, dtype=torch.bool)
            encoder_out = model.encode(src_ids, src_padding_mask)
            cross_kv = [layer.cross_attn.project_kv(encoder_out) for layer in model.decoder.layers]
        except Exception as error:  # noqa: BLE001 - the new requests fail; the running ones go on
            for request in new:
                request.sink(Event(error=f"{type(error).__name__}: {error}"))
            return
        self.cache.extend(cross_kv)
        first = torch.full((len(new),), self.tokenizer.bos_id, dtype=torch.long, device=self.device)
        if self.encoder_out is None:
            self.encoder_out, self.src_ids, self.src_padding_mask, self.last_ids = (encoder_out, src_ids,
                                                                                    src_padding_mask, first)
        else:
            s = max(self.src_ids.shape[1], src_ids.shape[1])
            self.encoder_out = torch.cat([pad_source(self.encoder_out, s, 0.0), pad_source(encoder_out, s, 0.0)])
            self.src_ids = torch.cat([pad_source(self.src_ids, s, self.tokenizer.pad_id),
                                      pad_source(src_ids, s, self.tokenizer.pad_id)])
            self.src_padding_mask = torch.cat([pad_source(self.src_padding_mask, s, True),
                                               pad_source(src_padding_mask, s, True)])
            self.last_ids = torch.cat([self.last_ids, first])
        self.slots += slots

    def drop(self, rows: list[int]) -> None:
        if not rows:
            return
        keep = [i for i in range(len(self.slots)) if i not in set(rows)]
        self.slots = [self.slots[i] for i in keep]
        if not keep:
            self.cache = BatchDecoderCache(self.model.config.n_decoder_layers, self.cache.capacity)
            self.encoder_out = self.src_ids = self.src_padding_mask = self.last_ids = None
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.keep(index)
        self.encoder_out = self.encoder_out.index_select(0, index)
        self.src_ids = self.src_ids.index_select(0, index)
        self.src_padding_mask = self.src_padding_mask.index_select(0, index)
        self.last_ids = self.last_ids.index_select(0, index)

    def fail_all(self, message: str) -> None:
        for slot in self.slots:
            slot.request.sink(Event(error=message))
        self.slots = []
        self.cache = BatchDecoderCache(self.model.config.n_decoder_layers, self.cache.capacity)
        self.encoder_out = self.src_ids = self.src_padding_mask = self.last_ids = None


class PromptTooLong(ValueError):
    """A prompt longer than the model's source length (HTTP 413)."""


def pad_source(x: Tensor, length: int, value: Any) -> Tensor:
    """(b, s, ...) padded along s to `length` with `value`."""
    if x.shape[1] == length:
        return x
    shape = (x.shape[0], length - x.shape[1], *x.shape[2:])
    return torch.cat([x, torch.full(shape, value, dtype=x.dtype, device=x.device)], dim=1)


def run_to_completion(engine: Engine, source_ids: Sequence[int], settings: Settings,
                      timeout: float = math.inf) -> tuple[str, str, list[TokenInfo]]:
    """(text, finish reason, tokens) of one request, waiting in the calling thread (for tests and the CLI)."""
    done = threading.Event()
    parts: list[str] = []
    tokens: list[TokenInfo] = []
    result: dict[str, str] = {}

    def sink(event: Event) -> None:
        parts.append(event.text)
        tokens.extend(event.tokens)
        if event.error is not None:
            result["error"] = event.error
            done.set()
        elif event.finish_reason is not None:
            result["finish_reason"] = event.finish_reason
            done.set()

    engine.submit(source_ids, settings, sink)
    if not done.wait(None if math.isinf(timeout) else timeout):
        raise TimeoutError("the engine did not finish the request")
    if "error" in result:
        raise RuntimeError(result["error"])
    return "".join(parts), result["finish_reason"], tokens
