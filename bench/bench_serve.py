"""A bounded load test of `seq2seq serve` against what a user would otherwise write, side by side in one run.

    python bench/bench_serve.py [--quick] [--concurrency 1,4,16,64] [--out runs/bench_serve.json]
                                [--model DIR] [--mixture DIR] [--max-tokens 64] [--max-batch 16] [--device auto]

Three systems, each an HTTP server in its own process on a free port at 127.0.0.1:

- (a) `seq2seq serve --max-batch 1`: this server with batching off (one request decoded at a time);
- (b) `seq2seq serve --max-batch 16` (`--max-batch`): this server with continuous batching;
- (c) the same-size Hugging Face BART (`BartForConditionalGeneration`, random weights, the same vocabulary) behind
  a minimal FastAPI endpoint in this file (`--bart-server`): a plain `def` route that calls `generate()` per
  request, as FastAPI runs it (in its thread pool, so concurrent requests call `generate()` at once). It streams
  nothing and returns the whole answer, so its time to first token is its full latency, and it has no
  inter-token latency or time per output token (reported as n/a). `--bart-lock` serializes its `generate()`
  calls instead (on few cores, concurrent calls each with their own OpenMP threads can oversubscribe them).

The model is random-weight, at the benchmarks' dimensions (bench/models.py: vocab 8192, d_model 256, 4+4 layers,
4 heads, ffn 1024, GELU, post-norm, 512 positions), saved with `save_pretrained` beside a tokenizer trained on Tiny
Shakespeare (`--text`); or `--model DIR` reuses a checkpoint (BART then mirrors its dimensions). Decoding is
greedy (temperature 0) with a fixed `max_tokens`. BART gets `min_new_tokens = max_new_tokens`; this server has no
such setting, but a random-weight model rarely emits </s>, so it too writes about `max_tokens` tokens. The mean
output tokens per request is reported for each system so that the comparison stays honest.

Prompts: fixed-seed, the chat prompts of the mixture's test split when `--mixture DIR` holds test.jsonl, else
fixed-seed synthetic sentences; each request is one user message. Every request streams (`stream: true`,
`stream_options.include_usage`); output tokens come from `usage.completion_tokens` (content chunks when a server
sends no usage). At each concurrency level C, C workers send a fixed number of requests (`--requests`, default
max(8, 4C)) back to back; the systems take turns at each level (a, b, c, then the next level) so that drift of the
machine falls on all of them. Metrics (as vLLM's `bench serve` and llmperf define them, ../shared/SERVING.md):

- requests/s and output tokens/s: completed requests and their output tokens over the level's wall time;
- TTFT: from sending a request to its first non-empty content chunk;
- ITL: every gap between consecutive content chunks of a request (a chunk may hold several tokens: the server
  holds back text that could start a stop string or is a partial UTF-8 character; the chunks/req column beside
  out tok/req shows how often that happened);
- TPOT: per request, (end-to-end latency - TTFT) / (output tokens - 1);
- end-to-end latency: from sending to the end of the stream.

Targets (printed as pass/fail; at concurrency 16, or the highest level run when 16 is not among them): (b)'s
output tokens/s at least 5x (c)'s and 3x (a)'s, and (b)'s p99 TTFT at most 1/5 of (c)'s.

`--quick`: concurrency 1 and 4, 8 requests per level, 16 tokens, bench/models.py's quick dimensions: a smoke
test (< 1 minute). Timings need a quiet machine: on a shared one they measure the neighbours.

Exit status: 0; 1 when a server does not start or dies, or any request fails (the JSON is still written when the
load ran); 3 with `--strict` when a target is missed; 130 on Ctrl-C, 143 on SIGTERM. Every wait has a timeout,
and the servers are stopped on the way out whatever happens. Needs the `serve` and `bench` extras (fastapi,
uvicorn, httpx, transformers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(REPO))
MODEL_NAME = "bench"
SYSTEMS = {
    "a": "seq2seq serve --max-batch 1 (batching off)",
    "b": "seq2seq serve --max-batch {max_batch} (continuous batching)",
    "c": "HF BART generate() per request behind FastAPI{lock} (no streaming: TTFT = full latency)",
}
WORDS = ("the king queen night day love death sword crown heart fair sweet good bad old young lord lady fool "
         "wise speak tell hear come go stay fly fight sleep dream sea land fire rain wind storm gold iron light dark "
         "why how when where what who i you we they my your our their is was will shall may must not never ever "
         "and but or if then so to of in on with by from").split()


# ---------------------------------------------------------------------------------------------------------
# (c): the server a user would otherwise write


def bart_server(args: argparse.Namespace) -> int:
    """The same-size BART behind one FastAPI route; its dimensions and tokenizer come from the checkpoint."""
    import torch
    import uvicorn
    from fastapi import Body, FastAPI
    from transformers import BartConfig, BartForConditionalGeneration

    from seq2seq.checkpoint import load_config, load_tokenizer
    from seq2seq.device import resolve_device

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config, tokenizer = load_config(args.model), load_tokenizer(args.model)
    device = resolve_device(args.device)
    bart_config = BartConfig(
        vocab_size=config.vocab_size, d_model=config.d_model, encoder_layers=config.n_encoder_layers,
        decoder_layers=config.n_decoder_layers, encoder_attention_heads=config.n_heads,
        decoder_attention_heads=config.n_heads, encoder_ffn_dim=config.d_ff, decoder_ffn_dim=config.d_ff,
        max_position_embeddings=config.max_seq_len, dropout=config.dropout,
        activation_function="relu" if config.activation == "relu" else "gelu", pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, decoder_start_token_id=tokenizer.bos_id,
        forced_bos_token_id=None, forced_eos_token_id=None)
    model = BartForConditionalGeneration(bart_config).to(device).eval()
    lock = threading.Lock() if args.bart_lock else contextlib.nullcontext()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's way
        text = "\n".join(m["content"] for m in body["messages"])
        ids = tokenizer.encode(text)[-(config.max_seq_len - 1):] + [tokenizer.eos_id]
        max_tokens = int(body.get("max_tokens", 16))
        with lock, torch.inference_mode():
            out = model.generate(input_ids=torch.tensor([ids], device=device), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False, num_beams=1)
        new = out[0, 1:].tolist()  # after the decoder start token
        return {"id": "chatcmpl-bart", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "bart"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": tokenizer.decode(new)},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new),
                          "total_tokens": len(ids) + len(new)}}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


# ---------------------------------------------------------------------------------------------------------
# The checkpoint and the prompts


def build_checkpoint(directory: Path, text_path: Path, quick: bool) -> Path:
    """A random-weight model at the benchmark dimensions and a tokenizer trained on `text_path`."""
    import torch

    from bench.models import our_config
    from seq2seq.checkpoint import save_pretrained
    from seq2seq.model import Transformer
    from seq2seq.tokenizer import Tokenizer

    if not text_path.is_file():
        raise BenchError(f"--text {text_path}: not found (Tiny Shakespeare's input.txt trains the tokenizer)")
    config = our_config("quick" if quick else "bench")
    tokenizer = Tokenizer.train([text_path], None, config.vocab_size)
    torch.manual_seed(0)
    return save_pretrained(Transformer(config).eval(), directory, tokenizer)


def load_prompts(mixture: str | None, count: int, seed: int = 0) -> tuple[list[str], str]:
    """`count` fixed-seed prompts and where they come from."""
    rng = random.Random(seed)
    if mixture is not None:
        path = Path(mixture) / "test.jsonl"
        if not path.is_file():
            raise BenchError(f"--mixture {mixture}: no test.jsonl")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        prompts = [r["prompt"] for r in rows if r.get("task") == "chat" and r.get("prompt", "").strip()]
        if not prompts:
            raise BenchError(f"{path}: no chat prompts")
        rng.shuffle(prompts)
        return [prompts[i % len(prompts)] for i in range(count)], f"{path} (chat task, {len(prompts)} prompts)"
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 32))).capitalize() + "?"
                 for _ in range(count)]
    return sentences, "synthetic sentences (seed 0, 8-32 words)"


# ---------------------------------------------------------------------------------------------------------
# The servers


class BenchError(RuntimeError):
    """The benchmark cannot go on: a server that does not start or dies, a missing file."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One server as a subprocess; its output goes to a log file (a pipe nobody reads could block it)."""

    def __init__(self, key: str, command: list[str], port: int, log_dir: Path, threads: int):
        self.key, self.port, self.url = key, port, f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"server-{key}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"server ({self.key}) exited with status {self.process.returncode}:\n{self.log_tail()}")

    def wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"{self.url}/health", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise BenchError(f"server ({self.key}) not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_servers(systems: list[str], model_dir: Path, log_dir: Path, args: argparse.Namespace,
                  max_queue: int) -> dict[str, ServerProcess]:
    servers: dict[str, ServerProcess] = {}
    for key in systems:
        port = free_port()
        if key == "c":
            command = [sys.executable, str(Path(__file__).resolve()), "--bart-server", "--port", str(port),
                       "--model", str(model_dir), "--threads", str(args.threads), "--device", args.device,
                       *(["--bart-lock"] if args.bart_lock else [])]
        else:
            command = [sys.executable, "-m", "seq2seq.cli", "serve", "--model", str(model_dir), "--port", str(port),
                       "--max-batch", "1" if key == "a" else str(args.max_batch), "--max-queue", str(max_queue),
                       "--model-name", MODEL_NAME, "--device", args.device]
        servers[key] = ServerProcess(key, command, port, log_dir, args.threads)
    return servers


# ---------------------------------------------------------------------------------------------------------
# The load


@dataclass
class Outcome:
    ok: bool = False
    error: str | None = None
    ttft: float | None = None  # seconds
    e2e: float | None = None
    gaps: list[float] = field(default_factory=list)  # between consecutive content chunks
    tokens: int = 0
    chunks: int = 0  # content chunks (one for a whole answer)
    streamed: bool = True


async def one_request(client, url: str, payload: dict[str, Any], timeout: float) -> Outcome:
    outcome = Outcome()
    start = time.perf_counter()
    chunk_times: list[float] = []

    async def go() -> None:
        usage_tokens = None
        async with client.stream("POST", f"{url}/v1/chat/completions", json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread())[:200].decode("utf-8", errors="replace")
                raise RuntimeError(f"HTTP {response.status_code}: {body}")
            if response.headers.get("content-type", "").startswith("application/json"):  # (c): the whole answer
                body = json.loads(await response.aread())
                chunk_times.append(time.perf_counter())
                outcome.streamed = False
                outcome.tokens = int(body["usage"]["completion_tokens"])
                return
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"error in stream: {chunk['error'].get('message')}")
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                    chunk_times.append(time.perf_counter())
                if chunk.get("usage"):
                    usage_tokens = int(chunk["usage"]["completion_tokens"])
            if not done:
                raise RuntimeError("stream ended without [DONE]")
            outcome.tokens = usage_tokens if usage_tokens is not None else len(chunk_times)

    try:
        await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        outcome.error = f"timed out after {timeout:.0f} s"
        return outcome
    except Exception as error:  # noqa: BLE001 - a failed request is a result, not a crash
        outcome.error = f"{type(error).__name__}: {error}"[:300]
        return outcome
    end = time.perf_counter()
    outcome.ok = True
    outcome.e2e = end - start
    outcome.ttft = (chunk_times[0] if chunk_times else end) - start
    outcome.gaps = [b - a for a, b in zip(chunk_times, chunk_times[1:])]
    outcome.chunks = len(chunk_times)
    return outcome


async def run_level(url: str, prompts: list[str], concurrency: int, requests: int, max_tokens: int,
                    request_timeout: float, level_timeout: float) -> tuple[list[Outcome], float]:
    """`requests` requests from `concurrency` workers back to back; (outcomes, wall seconds)."""
    import httpx

    outcomes = [Outcome(error=f"not completed within the level's {level_timeout:.0f} s") for _ in range(requests)]
    next_index = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(request_timeout, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:

        async def worker() -> None:
            for i in next_index:
                payload = {"model": MODEL_NAME, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                           "max_tokens": max_tokens, "temperature": 0, "stream": True,
                           "stream_options": {"include_usage": True}}
                outcomes[i] = await one_request(client, url, payload, request_timeout)

        start = time.perf_counter()
        tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=level_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
        wall = time.perf_counter() - start
    return outcomes, wall


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(values, q))


def summarize(system: str, concurrency: int, outcomes: list[Outcome], wall: float) -> dict[str, Any]:
    done = [o for o in outcomes if o.ok]
    streamed = bool(done) and all(o.streamed for o in done)
    tokens = sum(o.tokens for o in done)
    ttft = [o.ttft for o in done]
    e2e = [o.e2e for o in done]
    gaps = [g for o in done for g in o.gaps]
    tpot = [(o.e2e - o.ttft) / (o.tokens - 1) for o in done if o.tokens > 1] if streamed else []
    errors = sorted({o.error for o in outcomes if o.error})[:5]
    return {
        "system": system, "concurrency": concurrency, "requests": len(outcomes), "completed": len(done),
        "failed": len(outcomes) - len(done), "errors": errors, "wall_s": wall,
        "requests_per_s": len(done) / wall if wall > 0 else None,
        "output_tokens_per_s": tokens / wall if wall > 0 else None,
        "mean_output_tokens": tokens / len(done) if done else None,
        "mean_content_chunks": sum(o.chunks for o in done) / len(done) if done else None,
        "streamed": streamed,
        "ttft_mean_s": sum(ttft) / len(ttft) if ttft else None,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
        "itl_mean_s": sum(gaps) / len(gaps) if gaps else None,
        "itl_p50_s": percentile(gaps, 50), "itl_p99_s": percentile(gaps, 99),
        "tpot_mean_s": sum(tpot) / len(tpot) if tpot else None,
        "tpot_p50_s": percentile(tpot, 50), "tpot_p99_s": percentile(tpot, 99),
        "e2e_mean_s": sum(e2e) / len(e2e) if e2e else None,
        "e2e_p50_s": percentile(e2e, 50), "e2e_p99_s": percentile(e2e, 99),
    }


# ---------------------------------------------------------------------------------------------------------
# Reporting


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f}"


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| system | conc. | done | failed | req/s | out tok/s | out tok/req | chunks/req | TTFT p50 ms | "
             "TTFT p99 ms | ITL p50 ms | ITL p99 ms | TPOT p50 ms | TPOT p99 ms | e2e p50 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| ({r['system']}) | {r['concurrency']} | {r['completed']} | {r['failed']} | "
            f"{r['requests_per_s'] or 0:.2f} | {r['output_tokens_per_s'] or 0:.1f} | "
            f"{number(r['mean_output_tokens'])} | {number(r['mean_content_chunks'])} | "
            f"{ms(r['ttft_p50_s'])} | {ms(r['ttft_p99_s'])} | {ms(r['itl_p50_s'])} | {ms(r['itl_p99_s'])} | "
            f"{ms(r['tpot_p50_s'])} | {ms(r['tpot_p99_s'])} | {ms(r['e2e_p50_s'])} |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    level = 16 if 16 in levels else max(levels)
    at = {r["system"]: r for r in rows if r["concurrency"] == level}
    checks = []

    def check(name: str, value: float | None, bound: float | None, at_least: bool) -> None:
        passed = None if value is None or bound is None else (value >= bound if at_least else value <= bound)
        checks.append({"target": name, "concurrency": level, "value": value, "bound": bound, "passed": passed})

    b, a, c = at.get("b"), at.get("a"), at.get("c")
    tps = lambda r: r["output_tokens_per_s"] if r and r["completed"] else None  # noqa: E731
    p99 = lambda r: r["ttft_p99_s"] if r else None  # noqa: E731
    check("(b) output tokens/s >= 5x (c)", tps(b), None if tps(c) is None else 5 * tps(c), True)
    check("(b) output tokens/s >= 3x (a)", tps(b), None if tps(a) is None else 3 * tps(a), True)
    check("(b) p99 TTFT <= 1/5 of (c)'s", p99(b), None if p99(c) is None else p99(c) / 5, False)
    return checks


# ---------------------------------------------------------------------------------------------------------
# The run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: concurrency 1,4, 8 requests, 16 tokens, "
                                                             "tiny dimensions")
    parser.add_argument("--concurrency", default=None, help="comma-separated levels (default 1,4,16,64)")
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default max(8, 4 x level))")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per answer (default 64; quick 16)")
    parser.add_argument("--max-batch", type=int, default=16, help="(b)'s --max-batch")
    parser.add_argument("--systems", default="a,b,c", help="which of a, b, c to run")
    parser.add_argument("--model", help="reuse this checkpoint directory instead of a random one")
    parser.add_argument("--text", default=str(REPO.parent / "shared/data/tinyshakespeare/input.txt"),
                        help="text the tokenizer of the random checkpoint is trained on")
    parser.add_argument("--mixture", help="a mixture directory: prompts from its test.jsonl's chat task")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server (OMP_NUM_THREADS)")
    parser.add_argument("--request-timeout", type=float, default=None, help="seconds (default 300; quick 30)")
    parser.add_argument("--level-timeout", type=float, default=None, help="seconds per system and level "
                                                                          "(default 1200; quick 30)")
    parser.add_argument("--startup-timeout", type=float, default=None, help="seconds (default 180; quick 45)")
    parser.add_argument("--out", default="runs/bench_serve.json", help="where the JSON goes")
    parser.add_argument("--bart-lock", action="store_true",
                        help="(c) calls generate() one request at a time (default: concurrently, as FastAPI does)")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument("--bart-server", action="store_true", help=argparse.SUPPRESS)  # (c)'s process
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.levels = [int(c) for c in (args.concurrency or ("1,4" if quick else "1,4,16,64")).split(",") if c.strip()]
    args.max_tokens = args.max_tokens or (16 if quick else 64)
    args.request_timeout = args.request_timeout or (30.0 if quick else 300.0)
    args.level_timeout = args.level_timeout or (30.0 if quick else 1200.0)
    args.startup_timeout = args.startup_timeout or (45.0 if quick else 180.0)
    args.system_keys = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.bart_server:
        if not args.levels or min(args.levels) < 1:
            parser.error("--concurrency: positive integers, e.g. 1,4,16,64")
        if not args.system_keys or set(args.system_keys) - set(SYSTEMS):
            parser.error("--systems: a comma-separated subset of a,b,c")
        if args.max_tokens < 1 or args.max_batch < 1 or (args.requests is not None and args.requests < 1):
            parser.error("--max-tokens, --max-batch and --requests must be >= 1")
    return args


def requests_at(args: argparse.Namespace, level: int) -> int:
    if args.requests is not None:
        return args.requests
    return 8 if args.quick else max(8, 4 * level)


def bench(args: argparse.Namespace, work: Path) -> int:
    import torch

    started = time.monotonic()
    model_dir = Path(args.model) if args.model else build_checkpoint(work / "model", Path(args.text), args.quick)
    from seq2seq.checkpoint import load_config

    dims = load_config(model_dir).to_dict()
    prompts, prompt_source = load_prompts(args.mixture, 512)
    max_queue = max(64, max(args.levels))
    servers = start_servers(args.system_keys, model_dir, work, args, max_queue)
    try:
        for server in servers.values():
            server.wait_healthy(args.startup_timeout)
        print(f"servers up in {time.monotonic() - started:.1f} s: "
              + ", ".join(f"({k}) {s.url}" for k, s in servers.items()), file=sys.stderr)
        for key, server in servers.items():  # warm-up: the first request pays for lazy initialization
            outcomes, _ = asyncio.run(run_level(server.url, prompts, 1, 2, args.max_tokens, args.request_timeout,
                                                args.level_timeout))
            if not all(o.ok for o in outcomes):
                server.check_alive()
                raise BenchError(f"({key}) warm-up failed: {outcomes[0].error or outcomes[1].error}")
        rows = []
        for level in args.levels:
            for key, server in servers.items():
                outcomes, wall = asyncio.run(run_level(server.url, prompts, level, requests_at(args, level),
                                                       args.max_tokens, args.request_timeout, args.level_timeout))
                row = summarize(key, level, outcomes, wall)
                rows.append(row)
                print(f"({key}) concurrency {level}: {row['completed']}/{row['requests']} in {wall:.1f} s, "
                      f"{row['output_tokens_per_s'] or 0:.1f} output tokens/s, "
                      f"{row['mean_content_chunks'] or 0:.1f} content chunks per request"
                      + (f"; errors: {row['errors']}" if row["errors"] else ""), file=sys.stderr)
                server.check_alive()
    finally:
        for server in servers.values():
            server.stop()

    checks = targets(rows, args.levels)
    lock = ", one at a time" if args.bart_lock else ""
    systems = {k: SYSTEMS[k].format(max_batch=args.max_batch, lock=lock) for k in args.system_keys}
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads per server, device {args.device}; model {model_dir if args.model else 'random'} "
          f"(d_model {dims['d_model']}, {dims['n_encoder_layers']}+{dims['n_decoder_layers']} layers, vocab "
          f"{dims['vocab_size']}); greedy, max_tokens {args.max_tokens}; prompts: {prompt_source}")
    for key, text in systems.items():
        print(f"({key}) {text}")
    print()
    print(table(rows))
    level = checks[0]["concurrency"]
    print(f"\nTargets at concurrency {level}" + ("" if level == 16 else " (not 16: --quick or no 16 among the levels)")
          + ":")
    for check in checks:
        verdict = {True: "PASS", False: "FAIL", None: "n/a (a system missing)"}[check["passed"]]
        value = check["value"]
        shown = "n/a" if value is None else (f"{value:.1f}" if "tokens" in check["target"] else ms(value) + " ms")
        bound = check["bound"]
        limit = "n/a" if bound is None else (f"{bound:.1f}" if "tokens" in check["target"] else ms(bound) + " ms")
        print(f"- {check['target']}: {shown} against {limit}: {verdict}")
    failed = sum(r["failed"] for r in rows)
    result = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "settings": {"quick": args.quick, "concurrency": args.levels,
                     "requests": {str(c): requests_at(args, c) for c in args.levels}, "bart_lock": args.bart_lock,
                     "max_tokens": args.max_tokens, "temperature": 0, "max_batch": args.max_batch,
                     "max_queue": max_queue, "threads": args.threads, "device": args.device,
                     "model": str(model_dir) if args.model else "random", "dims": dims, "prompts": prompt_source},
        "systems": systems,
        "notes": ["(c) returns the whole answer at once: its TTFT is its full latency; ITL and TPOT are null",
                  "output tokens are usage.completion_tokens; mean_output_tokens shows what each system wrote",
                  "ITL is between content chunks; fewer chunks than tokens means held-back text (partial UTF-8, "
                  "stop-string prefixes) came out several tokens at once"],
        "results": rows, "targets": checks, "wall_s": time.monotonic() - started,
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {out}", file=sys.stderr)
    print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    if failed:
        print(f"error: {failed} request(s) failed", file=sys.stderr)
        return 1
    if args.strict and any(c["passed"] is False for c in checks):
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bart_server:
        return bart_server(args)

    def terminate(signum, frame):  # SIGTERM: unwind through the finally that stops the servers
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_serve-") as work:
            return bench(args, Path(work))
    except (BenchError, ValueError, OSError) as error:  # a missing file, a bad checkpoint, a server that died
        print(f"bench_serve: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
