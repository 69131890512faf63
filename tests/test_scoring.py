"""The one scorer: log p(continuation </s> | source), and its three callers (classify, the few-shot harness,
fine-tuning's test evaluation through classify) agreeing on the same inputs."""

import json

import pytest
import torch
from helpers import make_corpus

from seq2seq.classify import classify
from seq2seq.evaluation import TaskConfig, encode_context, evaluate_task, model_prefix
from seq2seq.model import ModelConfig, Transformer
from seq2seq.prompting import InferenceSpec, build_source
from seq2seq.scoring import continuation_log_probs
from seq2seq.tasks import CHAT_TASK, classifier_specs
from seq2seq.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.load(make_corpus(tmp_path_factory.mktemp("play"))[0])


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "copy-head"])
def model(tokenizer, request):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, n_encoder_layers=1,
                                   n_decoder_layers=1, d_ff=64, dropout=0.0, max_seq_len=64,
                                   copy_attention=request.param)).eval()


def test_score_is_the_sum_of_token_log_probs_with_the_end_term(model, tokenizer):
    sources = [tokenizer.encode("ROMEO:\nSweet love") + [tokenizer.eos_id], tokenizer.encode("Hark") + [3]]
    continuations = [tokenizer.encode("the moon"), tokenizer.encode("yes")]
    pairs = [(s, c) for s in sources for c in continuations]
    scores = continuation_log_probs(model, tokenizer, [p[0] for p in pairs], [p[1] for p in pairs], batch_size=3)
    for (source, ids), score in zip(pairs, scores):
        target = [tokenizer.bos_id, *ids, tokenizer.eos_id]
        with torch.no_grad():
            log_probs = model(torch.tensor([source]), torch.tensor([target[:-1]]))[0]
        by_hand = sum(float(log_probs[i, token]) for i, token in enumerate(target[1:]))
        assert score == pytest.approx(by_hand, abs=1e-4)


def test_classify_and_the_harness_agree_with_the_scorer(model, tokenizer, tmp_path):
    spec = InferenceSpec(CHAT_TASK, True, classifier_specs(tokenizer.tasks), fine_tuned=True)
    classifier = {**spec.classifiers["joke"], "template": "{text}"}  # the harness reads the question as it is
    texts = ["Why did the chicken cross the road?", "ROMEO:\nBut soft, what light"]
    words = [tokenizer.encode("yes"), tokenizer.encode("no")]
    sources = [build_source(tokenizer, text, task="is_joke", tone="plain", max_len=64).ids for text in texts]
    scores = torch.tensor(continuation_log_probs(model, tokenizer, [s for s in sources for _ in words],
                                                 words * len(sources))).view(len(texts), 2)
    # classify: the softmax over the label words' scores
    probabilities = classify(model, tokenizer, texts, classifier)
    torch.testing.assert_close(torch.tensor([[p["true"], p["false"]] for p in probabilities], dtype=torch.float64),
                               scores.double().softmax(-1), atol=1e-6, rtol=0)
    # the harness: the same encoder input, and accuracy is the argmax of the same scores
    rows = [{"prompt": text, "response": "yes", "split": "test", "task": "is_joke"} for text in texts]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TaskConfig(name="joke", data=str(path), demo_data=str(path), metric="loglikelihood",
                      choices=["yes", "no"], task_marker="is_joke")
    prefix = model_prefix(task, tokenizer, spec)
    for text, source in zip(texts, sources):
        assert encode_context(task, [], type("Q", (), {"question": text})(), tokenizer, prefix, 64).ids == source
    accuracy = evaluate_task(model, tokenizer, task, [0], None, 0, spec, 64)[0]["metrics"]["acc"]["value"]
    assert accuracy == pytest.approx(float((scores[:, 0] > scores[:, 1]).double().mean()))
