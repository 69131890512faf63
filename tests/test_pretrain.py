"""Pretraining: the objectives, the val measurement, the command end to end, and 2 processes against 1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import make_corpus

from data_pipelines.corpus import load_corpus
from pretrain.objectives import ObjectiveConfig, PretrainingObjectives
from pretrain.recipe import PretrainingTask, load_config, resegment, resegmented_copies
from seq2seq.model import ModelConfig, Transformer
from seq2seq.perplexity import Spans, prefix_ids
from seq2seq.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"


@pytest.fixture(scope="module")
def corpus_paths(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("play"))


@pytest.fixture(scope="module")
def tokenizer(corpus_paths):
    return Tokenizer.load(corpus_paths[0])


@pytest.fixture(scope="module")
def corpus(corpus_paths, tokenizer):
    return load_corpus(corpus_paths[1], tokenizer)


def objectives(corpus, tokenizer, **overrides) -> PretrainingObjectives:
    config = ObjectiveConfig(**{"src_len": 24, "tgt_len": 16, **overrides})
    return PretrainingObjectives(config, np.asarray(corpus.train), tokenizer, batch_size=8, seed=3)


def find(haystack: np.ndarray, needle: np.ndarray) -> list[int]:
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return np.flatnonzero((windows == needle).all(axis=1)).tolist()


def test_prefix_lm_continues_the_text_the_encoder_reads(corpus, tokenizer):
    batch = objectives(corpus, tokenizer).batches(step=0, rank=0, world_size=1, accum_steps=1)[0]
    assert batch.src_ids.shape == (8, 24 + 2) and batch.tgt_in.shape == (8, 16)
    assert (batch.src_ids[:, 0] == tokenizer.task_id("prefix_lm")).all()
    assert (batch.src_ids[:, -1] == tokenizer.eos_id).all() and (batch.tgt_in[:, 0] == tokenizer.bos_id).all()
    assert torch.equal(batch.tgt_in[:, 1:], batch.tgt_out[:, :-1])
    train = np.asarray(corpus.train)
    for row in range(8):
        text = np.concatenate([batch.src_ids[row, 1:-1].numpy(), batch.tgt_out[row].numpy()])
        assert find(train, text), "source and target are one contiguous stretch of the corpus"


def test_prefix_length_varies_per_step_when_asked(corpus, tokenizer):
    lengths = {objectives(corpus, tokenizer, min_prefix_len=4).batches(s, 0, 1, 1)[0].src_ids.shape[1]
               for s in range(20)}
    assert len(lengths) > 3 and min(lengths) >= 4 + 2 and max(lengths) <= 24 + 2


def test_span_corruption_round_trips_to_the_original_window(corpus, tokenizer):
    maker = objectives(corpus, tokenizer, span_corruption=1.0, src_len=40)
    batch = maker.batches(step=1, rank=0, world_size=1, accum_steps=1)[0]
    sentinels = {tokenizer.sentinel_id(i): i for i in range(tokenizer.num_sentinels)}
    noise, spans = maker.span_lengths(40)
    assert batch.src_ids.shape == (8, 40 - noise + spans + 2) and batch.tgt_out.shape == (8, noise + spans + 1)
    train = np.asarray(corpus.train)
    for row in range(8):
        src = batch.src_ids[row, 1:-1].tolist()
        tgt = batch.tgt_out[row, :-1].tolist()
        assert batch.src_ids[row, 0] == tokenizer.task_id("span_corruption")
        assert batch.tgt_out[row, -1] == tokenizer.eos_id
        filled: dict[int, list[int]] = {}
        for token in tgt:
            if token in sentinels:
                current = filled.setdefault(sentinels[token], [])
            else:
                current.append(token)
        assert sorted(filled) == list(range(spans)) and all(filled.values())
        original = [t for token in src for t in (filled[sentinels[token]] if token in sentinels else [token])]
        assert len(original) == 40 and find(train, np.array(original))


def test_batches_depend_only_on_the_step_and_split_over_processes(corpus, tokenizer):
    maker = objectives(corpus, tokenizer, span_corruption=0.5)
    whole = maker.batches(5, 0, 1, 1)[0]
    again = objectives(corpus, tokenizer, span_corruption=0.5).batches(5, 0, 1, 1)[0]
    assert torch.equal(whole.src_ids, again.src_ids)
    parts = [b for rank in range(2) for b in maker.batches(5, rank, 2, 2)]  # 2 processes x 2 accumulation steps
    # Micro-batch m of rank r holds rows [(m * world + r) * micro, ...): reassemble in that order.
    ordered = [parts[0], parts[2], parts[1], parts[3]]
    assert torch.equal(torch.cat([b.src_ids for b in ordered]), whole.src_ids)
    assert not torch.equal(maker.batches(6, 0, 1, 1)[0].tgt_out, whole.tgt_out)


def test_a_resegmented_copy_spells_the_same_text_with_other_tokens(corpus, tokenizer):
    train = np.asarray(corpus.train)
    copy = resegment(corpus, tokenizer, alpha=0.3, seed=1)
    assert tokenizer.decode(copy) == tokenizer.decode(train)
    assert len(copy) > len(train)  # merges were dropped
    assert not np.array_equal(copy, resegment(corpus, tokenizer, alpha=0.3, seed=2))
    # Documents are resegmented one by one and their separators stay.
    docs = ["ROMEO:\nSweet love, gentle night.", "JULIET:\nWherefore art thou?"]
    joined = tokenizer.encode(docs[0]) + [tokenizer.eos_id] + tokenizer.encode(docs[1])
    two = SimpleNamespace(train=np.array(joined), meta={"separator_ids": [tokenizer.eos_id]})
    out = resegment(two, tokenizer, alpha=0.5, seed=3)
    [bound] = np.flatnonzero(out == tokenizer.eos_id)
    assert [tokenizer.decode(out[:bound]), tokenizer.decode(out[bound + 1:])] == docs


@pytest.mark.slow
def test_resegmented_copies_are_made_once_and_read_by_every_later_process(corpus_paths, corpus, tokenizer):
    """SentencePiece's sampling differs between processes: the processes of a run, a resumed run and a rerun must
    all read the copies the first one made."""
    made = resegmented_copies(corpus, tokenizer, copies=2, alpha=0.2, seed=40)
    assert len(list((Path(corpus.path) / "resegmented").glob("*-alpha0.2-seed4[01].npy"))) == 2
    code = ("import sys; from seq2seq.tokenizer import Tokenizer; from pretrain.recipe import resegmented_copies; "
            "from data_pipelines.corpus import load_corpus; t = Tokenizer.load(sys.argv[1]); "
            "c = load_corpus(sys.argv[2], t); print([int(a.sum()) for a in resegmented_copies(c, t, 2, 0.2, 40)])")
    other = subprocess.run([sys.executable, "-c", code, str(corpus_paths[0]), str(corpus_paths[1])],
                           capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str([int(a.sum()) for a in made])
    assert all(tokenizer.decode(a) == tokenizer.decode(np.asarray(corpus.train)) for a in made)


def test_prefix_lm_rows_come_from_resegmented_copies_in_their_share(corpus, tokenizer):
    train = np.asarray(corpus.train)
    copy = resegment(corpus, tokenizer, alpha=0.3, seed=1)
    config = ObjectiveConfig(src_len=24, tgt_len=16, sampled_segmentations=1, sampled_share=0.5)
    make = lambda: PretrainingObjectives(config, train, tokenizer, batch_size=8, seed=3, resegmented=[copy])  # noqa: E731
    origins = []
    for step in range(4):
        batch = make().batches(step, 0, 1, 1)[0]
        assert torch.equal(batch.src_ids, make().batches(step, 0, 1, 1)[0].src_ids)  # a function of the step
        for row in range(8):
            text = np.concatenate([batch.src_ids[row, 1:-1].numpy(), batch.tgt_out[row].numpy()])
            in_train, in_copy = bool(find(train, text)), bool(find(copy, text))
            assert in_train or in_copy, "each row is one contiguous stretch of the split or of its copy"
            origins.append("copy" if in_copy and not in_train else "train")
    assert 8 <= origins.count("copy") <= 24


class OneProcess:
    """What `PretrainingTask.evaluate` reads of an Accelerator, for one process."""

    process_index, num_processes, device = 0, 1, torch.device("cpu")

    @staticmethod
    def reduce(tensor, reduction):
        return tensor


def test_val_spans_tile_the_whole_val_split(corpus, tokenizer):
    spans = Spans(np.asarray(corpus.val), src_len=20, tgt_len=16)
    src, _, _, _, targets = spans.batch(list(range(len(spans))), tokenizer, prefix_ids(tokenizer))
    predicted = targets[targets != tokenizer.pad_id]
    assert torch.equal(predicted, torch.from_numpy(np.asarray(corpus.val).astype(np.int64)))
    assert int(torch.from_numpy(tokenizer.char_lengths())[predicted].sum()) == corpus.meta["val"]["chars"]
    # Span i's encoder reads the 20 tokens before it.
    assert src[3, 1:21].tolist() == np.asarray(corpus.val)[3 * 16 - 20:3 * 16].tolist()


def test_val_nats_per_char_is_summed_nll_over_characters(corpus_paths, corpus, tokenizer):
    config = load_config(TINY, [f"data.corpus={corpus_paths[1]}", f"data.tokenizer={corpus_paths[0]}"])
    task = PretrainingTask(config, tokenizer, corpus)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, n_encoder_layers=1,
                                    n_decoder_layers=1, d_ff=64, dropout=0.0)).eval()
    metrics = task.evaluate(model, OneProcess(), full=True)
    src, src_mask, tgt_in, tgt_mask, tgt_out = task.val.batch(list(range(len(task.val))), tokenizer,
                                                              prefix_ids(tokenizer))
    with torch.no_grad():
        log_probs = model(src, tgt_in, src_mask, tgt_mask)
    keep = tgt_out != tokenizer.pad_id
    nll = -log_probs.gather(-1, tgt_out[..., None]).squeeze(-1) * keep
    assert metrics["val_chars"] == corpus.meta["val"]["chars"]
    assert metrics["val_tokens"] == len(corpus.val)
    assert metrics["val_nats_per_char"] == pytest.approx(float(nll.sum()) / corpus.meta["val"]["chars"], rel=1e-5)
    assert metrics["val_loss"] == pytest.approx(float(nll.sum() / keep.sum()), rel=1e-5)
    assert metrics["val_bits_per_char"] == pytest.approx(metrics["val_nats_per_char"] / np.log(2))


def run_pretrain(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable, "-m", "pretrain"]) + ["--config", str(TINY), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def logged(output_dir: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row[key] for row in rows if key in row}


@pytest.mark.slow
def test_pretrain_command_end_to_end(corpus_paths, tmp_path):
    out = tmp_path / "run"
    run_pretrain([f"output_dir={out}", f"data.corpus={corpus_paths[1]}", f"data.tokenizer={corpus_paths[0]}"])
    assert {p.name for p in (out / "final").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.model"}
    losses = logged(out, "loss")
    assert sorted(losses) == [5, 10, 15, 20]
    assert losses[20] < losses[5]
    assert logged(out, "val_nats_per_char")[20] > 0
    assert logged(out, "sample")  # a generated text is logged with each evaluation
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(corpus_paths, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    common = [f"data.corpus={corpus_paths[1]}", f"data.tokenizer={corpus_paths[0]}", "train.max_steps=6",
              "train.log_every=1", "train.eval_every=100", "train.save_every=100", "eval.sample_tokens=1"]
    run_pretrain([f"output_dir={tmp_path / 'one'}", "train.grad_accum_steps=2", *common])
    launcher = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pretrain"]
    run_pretrain([f"output_dir={tmp_path / 'two'}", *common], launcher=launcher)
    one, two = logged(tmp_path / "one", "loss"), logged(tmp_path / "two", "loss")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4)
    final_one = logged(tmp_path / "one", "val_nats_per_char")[6]
    assert logged(tmp_path / "two", "val_nats_per_char")[6] == pytest.approx(final_one, rel=1e-4)


def test_unknown_override_is_named(corpus_paths):
    with pytest.raises(ValueError, match="train.learning_rate"):
        load_config(TINY, ["train.learning_rate=1e-3"])
    with pytest.raises(ValueError, match="objective.span_corruption"):
        load_config(TINY, ["objective.span_corruption=2"])


@pytest.mark.slow
def test_missing_corpus_names_the_command(tmp_path, corpus_paths):
    result = subprocess.run([sys.executable, "-m", "pretrain", "--config", str(TINY), f"output_dir={tmp_path}",
                             f"data.corpus={tmp_path / 'nowhere'}", f"data.tokenizer={corpus_paths[0]}"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "seq2seq data corpus" in result.stderr


def test_eval_text_perplexity_equals_the_pretraining_val_figure(corpus_paths, corpus, tokenizer):
    """`seq2seq eval --text` on the val split's text gives what the pretraining loop reports for its val split."""
    from seq2seq.evaluation import evaluate_task, text_task
    from seq2seq.prompting import InferenceSpec

    config = load_config(TINY, [f"data.corpus={corpus_paths[1]}", f"data.tokenizer={corpus_paths[0]}"])
    task = PretrainingTask(config, tokenizer, corpus)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, n_encoder_layers=1,
                                    n_decoder_layers=1, d_ff=64, dropout=0.0)).eval()

    text = (corpus_paths[0].parents[1] / "play.txt").read_text()
    val_text = text[int(len(text) * 0.9):]  # the text_files source's val split (val_fraction 0.1)
    val_file = corpus_paths[0].parents[1] / "val.txt"
    val_file.write_text(val_text)
    assert tokenizer.encode(val_text) == np.asarray(corpus.val).tolist()
    loop = task.evaluate(model, OneProcess(), full=True)
    row = evaluate_task(model, tokenizer, text_task(str(val_file), config.objective.src_len, config.objective.tgt_len),
                        [0], None, 0, InferenceSpec(), model.config.max_seq_len)[0]
    assert row["n"] == loop["val_tokens"] and row["chars"] == loop["val_chars"]
    assert row["metrics"]["nats_per_char"]["value"] == pytest.approx(loop["val_nats_per_char"], rel=1e-6)
    assert row["metrics"]["bits_per_char"]["value"] == pytest.approx(loop["val_bits_per_char"], rel=1e-6)
    assert row["metrics"]["nats_per_token"]["value"] == pytest.approx(loop["val_loss"], rel=1e-6)
