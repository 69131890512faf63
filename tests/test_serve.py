"""`seq2seq serve` against the official openai client on a live server at 127.0.0.1: the wire format, streaming,
logprobs, n, seeds, stop strings, errors, disconnects, and a bounded load test checked against each prompt
served alone. Also the engine alone: a request in a full batch equals the request alone, token for token."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from helpers import PROMPTS, tiny_model, train_tokenizer

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from seq2seq.checkpoint import save_pretrained  # noqa: E402
from seq2seq.engine import Engine, Settings, run_to_completion  # noqa: E402
from seq2seq.generation import GenerationConfig, generate  # noqa: E402
from seq2seq.prompting import SourceIds, build_conversation_source  # noqa: E402
from seq2seq.serve import build_server, create_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, model_dir, **options):
        self.server = build_server(str(model_dir), "cpu", **options)
        self.port = free_port()
        config = uvicorn.Config(create_app(self.server), host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False)
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "unused") -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def metric(self, name: str, headers=None) -> float:
        text = httpx.get(f"{self.url}/metrics", headers=headers or {}).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def close(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=10)
        self.server.engine.stop()


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("serve") / "tiny"
    save_pretrained(tiny_model(tokenizer), directory, tokenizer)
    return directory


@pytest.fixture(scope="module")
def live(model_dir):
    server = LiveServer(model_dir, max_batch=8, max_queue=64)
    yield server
    server.close()


def alone(model_dir, tokenizer, prompt: str, max_tokens: int) -> str:
    """The greedy answer to one chat message, from generate() with nothing else in the batch."""
    server = build_server(str(model_dir), "cpu")
    server.engine.stop()
    source = build_conversation_source(tokenizer, [{"role": "user", "content": prompt}], task=server.spec.task,
                                       tone=None, max_len=server.engine.max_source_len)
    return generate(server.engine.model, tokenizer, [source.ids], GenerationConfig(max_new_tokens=max_tokens))[0].text


def test_engine_greedy_in_a_full_batch_equals_alone(tokenizer):
    model = tiny_model(tokenizer)
    sources = [SourceIds(tokenizer.encode(p) + [tokenizer.eos_id]).ids for p in PROMPTS * 3]
    expected = [generate(model, tokenizer, [s], GenerationConfig(max_new_tokens=20))[0].text for s in sources]
    engine = Engine(model, tokenizer, max_batch=4).start()
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda s: run_to_completion(engine, s, Settings(max_tokens=20, temperature=0),
                                                            timeout=60)[0], sources))
    finally:
        engine.stop()
    assert got == expected


def test_chat_completion_and_models(live, model_dir, tokenizer):
    client = live.client()
    assert [m.id for m in client.models.list().data] == ["tiny"]
    response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Why did"}],
                                              max_tokens=12, temperature=0)
    assert response.object == "chat.completion" and response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == alone(model_dir, tokenizer, "Why did", 12)
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 12 and response.usage.prompt_tokens > 0


def test_streaming_chunks_and_the_usage_chunk(live, model_dir, tokenizer):
    client = live.client()
    messages = [{"role": "user", "content": "Oh great"}]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == chunks[-1].usage.total_tokens - \
        chunks[-1].usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == alone(model_dir, tokenizer, "Oh great", 10)
    plain = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                stream=True))
    assert plain[-1].choices and plain[-1].choices[0].finish_reason is not None  # no usage chunk unasked


def test_completions_with_echo_and_logprobs(live):
    client = live.client()
    response = client.completions.create(model="tiny", prompt="Why did", max_tokens=5, temperature=0, echo=True,
                                         logprobs=2)
    choice = response.choices[0]
    assert choice.text.startswith("Why did")
    logprobs = choice.logprobs
    n_prompt = logprobs.token_logprobs.index(next(lp for lp in logprobs.token_logprobs if lp is not None))
    assert n_prompt > 0 and all(lp is None for lp in logprobs.token_logprobs[:n_prompt])  # the encoder's input
    assert all(lp <= 0 for lp in logprobs.token_logprobs[n_prompt:])
    assert all(len(top) <= 2 for top in logprobs.top_logprobs[n_prompt:])
    assert "".join(logprobs.tokens) == choice.text and logprobs.text_offset[0] == 0
    ids = client.completions.create(model="tiny", prompt=[[5, 6, 7], [8, 9]], max_tokens=3, temperature=0)
    assert [c.index for c in ids.choices] == [0, 1]


def test_chat_logprobs_n_and_seeds(live):
    client = live.client()
    messages = [{"role": "user", "content": "The quick brown fox"}]
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                              logprobs=True, top_logprobs=3, n=2)
    assert [c.index for c in response.choices] == [0, 1]
    content = response.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)

    def seeded(seed: int) -> str:
        return client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=1.0,
                                              seed=seed).choices[0].message.content

    first = seeded(7)
    with ThreadPoolExecutor(6) as pool:  # the same seed among different batch companions
        companions = [pool.submit(seeded, s) for s in range(5)]
        again = seeded(7)
        [c.result() for c in companions]
    assert again == first


def test_stop_string_split_across_tokens_is_never_emitted(live, model_dir, tokenizer):
    full = alone(model_dir, tokenizer, "Why did", 40)
    ids = tokenizer.encode(full)
    pieces = [tokenizer.decode(ids[:i]) for i in range(len(ids) + 1)]
    boundary = next(len(p) for p in pieces[2:] if 2 <= len(p) < len(full) - 2)  # a token boundary inside the text
    stop = full[boundary - 2:boundary + 2]  # two characters of one token, two of the next
    expected = full[:full.index(stop)]
    client = live.client()
    messages = [{"role": "user", "content": "Why did"}]
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0,
                                              stop=[stop])
    assert response.choices[0].message.content == expected and response.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0,
                                              stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_errors_are_openai_error_objects(live, model_dir):
    client = live.client()
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny", messages=messages, temperature=5)
    assert error.value.body["param"] == "temperature" and "temperature" in error.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.APIStatusError) as error:
        client.completions.create(model="tiny", prompt="word " * 500, max_tokens=2)
    assert error.value.status_code == 413
    for body, field in [(b"{not json", None), (b"\xff\xfe{}", None),
                        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), "messages[0].role"),
                        (json.dumps({"messages": [{"role": "user", "content": ""}]}).encode(), "messages[0].content"),
                        (json.dumps({"messages": messages, "max_tokens": -1}).encode(), "max_tokens"),
                        (json.dumps({"messages": messages, "max_tokens": 10**12}).encode(), "max_tokens"),
                        (json.dumps({"messages": messages, "top_p": 3}).encode(), "top_p"),
                        (json.dumps({"messages": messages, "stop": ["a"] * 9}).encode(), "stop"),
                        (json.dumps({"messages": messages, "n": 1000}).encode(), "n")]:
        response = httpx.post(f"{live.url}/v1/chat/completions", content=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == field and "Traceback" not in response.text
    too_big = httpx.post(f"{live.url}/v1/chat/completions", content=b"x" * (2 << 20))
    assert too_big.status_code == 413


def test_api_key_and_a_full_queue(model_dir):
    server = LiveServer(model_dir, api_key="s3cret", max_batch=1, max_queue=1)
    try:
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").models.list()
        assert httpx.get(f"{server.url}/health").status_code == 200  # no key needed
        assert server.client("s3cret").models.list().data[0].id == "tiny"
        server.server.engine.stop()  # nothing is taken from the queue any more: one request fills it
        headers = {"Authorization": "Bearer s3cret"}
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        def wait_in_queue() -> None:
            try:
                httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=2)
            except httpx.TimeoutException:
                pass  # it never leaves the queue: the engine has stopped

        waiting = threading.Thread(target=wait_in_queue, daemon=True)
        waiting.start()
        deadline = time.monotonic() + 10
        while server.server.engine.waiting.qsize() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
        assert busy.status_code == 503 and busy.headers["retry-after"] and busy.json()["error"]["type"]
    finally:
        server.close()


def test_a_client_that_disconnects_frees_its_slot(model_dir, tokenizer, tmp_path):
    rambling = tiny_model(tokenizer)
    with torch.no_grad():
        rambling.output_proj.weight[tokenizer.eos_id] = -10 * rambling.output_proj.weight.abs().max()
    save_pretrained(rambling, tmp_path / "rambling", tokenizer)
    server = LiveServer(tmp_path / "rambling", max_batch=4)
    try:
        body = {"messages": [{"role": "user", "content": "Why did"}], "max_tokens": 60, "stream": True,
                "temperature": 0, "repetition_penalty": 1.0}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
        deadline = time.monotonic() + 20
        while server.metric("seq2seq_running_requests") > 0:
            assert time.monotonic() < deadline, "the abandoned request kept its slot"
            time.sleep(0.1)
    finally:
        server.close()


@pytest.mark.slow
def test_load_64_requests_from_16_threads_none_mixed_up(live, model_dir, tokenizer):
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(16)]
    expected = {p: alone(model_dir, tokenizer, p, 12) for p in prompts}
    client = live.client()

    def ask(i: int) -> tuple[str, str]:
        prompt = prompts[i % len(prompts)]
        stream = i % 2 == 0
        response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=12, temperature=0, stream=stream)
        if stream:
            return prompt, "".join(c.choices[0].delta.content or "" for c in response if c.choices)
        return prompt, response.choices[0].message.content

    def bad(i: int) -> int:
        return httpx.post(f"{live.url}/v1/chat/completions", content=b"{" * (i + 1)).status_code

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(64)))
        bad_statuses = list(pool.map(bad, range(16)))  # a burst of bad requests during the load
    assert all(answer == expected[prompt] for prompt, answer in answers)
    assert set(bad_statuses) == {400}
    assert httpx.get(f"{live.url}/health").json()["status"] == "ok"


def test_feedback_by_completion_id_and_whole(model_dir, tmp_path):
    from seq2seq.preference import read_feedback

    path = tmp_path / "feedback.jsonl"
    server = LiveServer(model_dir, feedback=str(path))
    try:
        messages = [{"role": "user", "content": "Why did"}]
        response = server.client().chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                                            temperature=0)
        answer = response.choices[0].message.content
        assert httpx.post(f"{server.url}/v1/feedback", json={"id": response.id, "label": False}).status_code == 200
        pair = {"prompt": "Hi", "chosen": "Good day to you.", "rejected": "I'm sorry."}
        assert httpx.post(f"{server.url}/v1/feedback", json=pair).status_code == 200
        same = httpx.post(f"{server.url}/v1/feedback", json={**pair, "rejected": pair["chosen"]})
        assert same.status_code == 400 and "chosen equals rejected" in same.json()["error"]["message"]
        unknown = httpx.post(f"{server.url}/v1/feedback", json={"id": "chatcmpl-nope", "label": True})
        assert unknown.status_code == 404
    finally:
        server.close()
    records = read_feedback(path)
    assert records[0].prompt == messages and records[0].response == answer and records[0].label is False
    assert records[1].is_pair and records[1].checkpoint_sha256 == records[0].checkpoint_sha256 != ""


def test_bad_settings_of_one_request_never_touch_the_others(live):
    messages = [{"role": "user", "content": "Why did"}]
    for body, field in [({"messages": messages, "seed": 2**64, "temperature": 1.0}, "seed"),
                        ({"messages": messages, "top_p": 0}, "top_p"),
                        ({"messages": [*messages, {"role": "system", "content": "x"}]}, "messages"),
                        ({"messages": messages, "n": 8, "max_tokens": 2}, None)]:
        response = httpx.post(f"{live.url}/v1/chat/completions", json=body)
        if field is None:
            assert response.status_code == 200
            continue
        assert response.status_code == 400 and response.json()["error"]["param"] == field, response.text
    answer = live.client().chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length")
