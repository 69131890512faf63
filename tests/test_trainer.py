"""The shared training loop: exact resume, Ctrl-C, non-finite steps, schedule, parameter groups, logs."""

import json
import math
import os
import re
import shutil
import signal

import pytest
import torch

from seq2seq.checkpoint import CheckpointError, load_model
from seq2seq.model import ModelConfig, Transformer
from seq2seq.trainer import (
    Batch,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    checkpoint_dirs,
    locked,
    lr_lambda,
    parameter_groups,
)

VOCAB = 30


class CopyTask:
    """Reverse a random sequence: batches are a pure function of the step, like the real recipes'."""

    def __init__(self, batch_size: int, fail_at: set[int] | None = None):
        self.batch_size = batch_size
        self.fail_at = fail_at or set()
        self.evaluations = 0

    def global_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(1000 + step)
        src = torch.randint(4, VOCAB, (self.batch_size, 6), generator=generator)
        tgt = torch.cat([torch.full((self.batch_size, 1), 2), src.flip(1), torch.full((self.batch_size, 1), 3)], 1)
        return src, tgt

    def batches(self, step, rank, world_size, accum_steps):
        src, tgt = self.global_batch(step)
        if step in self.fail_at:
            src = src.clone()
            src[0, 0] = -1  # poison marker, turned into a NaN by the model patch below
        micro = self.batch_size // (world_size * accum_steps)
        out = []
        for m in range(accum_steps):
            rows = slice((m * world_size + rank) * micro, (m * world_size + rank + 1) * micro)
            out.append(Batch(src[rows], tgt[rows, :-1], tgt[rows, 1:]))
        return out

    def evaluate(self, model, accelerator, full):
        self.evaluations += 1
        src, tgt = self.global_batch(10_000)
        return {"val_loss": float(model.loss(src, tgt[:, :-1], tgt[:, 1:]))}

    def sample(self, model):
        return None


def make_model(dropout: float = 0.1, **overrides) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(**{**dict(vocab_size=VOCAB, d_model=32, n_heads=4, n_encoder_layers=1, n_decoder_layers=1,
                                   d_ff=64, dropout=dropout, max_seq_len=16, norm_placement="pre"), **overrides})
    model = Transformer(config)
    original = model.loss

    def loss(src_ids, *args, **kwargs):  # a poisoned batch gives a NaN loss, as bad data or a blow-up would
        poisoned = bool((src_ids < 0).any())
        value = original(src_ids.clamp(min=4), *args, **kwargs)
        return value * float("nan") if poisoned else value

    model.loss = loss
    return model


def interrupt_on_call(model: Transformer, call: int) -> Transformer:
    """Ctrl-C (a real SIGINT) from inside the model's loss on its `call`-th call: in the middle of a step, after
    dropout has drawn random numbers and before the optimizer has stepped."""
    original, calls = model.loss, [0]

    def loss(*args, **kwargs):
        value = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return value

    model.loss = loss
    return model


def train_config(**overrides) -> TrainConfig:
    base = dict(max_steps=8, batch_size=4, grad_accum_steps=2, lr=3e-3, warmup_steps=2, decay_steps=8, device="cpu",
                log_every=1, eval_every=4, save_every=4, seed=7)
    base.update(overrides)
    return TrainConfig(**base)


def losses(output_dir) -> dict[int, float]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in lines if "loss" in row}


def test_resumed_run_logs_the_same_losses(tmp_path):
    full = Trainer(train_config(), make_model(), CopyTask(4), tmp_path / "full", log=False)
    full.fit()
    first = Trainer(train_config(max_steps=4), make_model(), CopyTask(4), tmp_path / "split", log=False)
    first.fit()
    second = Trainer(train_config(), make_model(), CopyTask(4), tmp_path / "split", log=False)
    second.fit(resume="latest")
    assert len(losses(tmp_path / "full")) == 8
    assert losses(tmp_path / "split") == losses(tmp_path / "full")  # bit-exact, dropout included
    a = load_model(tmp_path / "full" / "final").state_dict()
    b = load_model(tmp_path / "split" / "final").state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


class WeightedCopyTask(CopyTask):
    """CopyTask with every target position weighted `weight` in the loss."""

    def __init__(self, batch_size: int, weight: float):
        super().__init__(batch_size)
        self.weight = weight

    def batches(self, step, rank, world_size, accum_steps):
        return [Batch(b.src_ids, b.tgt_in, b.tgt_out, tgt_weights=torch.full(b.tgt_out.shape, self.weight))
                for b in super().batches(step, rank, world_size, accum_steps)]


def test_loss_is_divided_by_the_summed_weights_of_the_global_batch(tmp_path):
    plain = Trainer(train_config(), make_model(), CopyTask(4), tmp_path / "plain", log=False)
    plain.fit()
    weighted = Trainer(train_config(), make_model(), WeightedCopyTask(4, 2.0), tmp_path / "weighted", log=False)
    weighted.fit()
    expected = losses(tmp_path / "plain")
    assert losses(tmp_path / "weighted") == pytest.approx(expected, rel=1e-5)  # a weighted mean, not doubled


def test_ctrl_c_mid_step_saves_the_step_boundary_and_resume_continues_exactly(tmp_path):
    reference = Trainer(train_config(), make_model(), CopyTask(4), tmp_path / "ref", log=False)
    reference.fit()
    # Loss calls 1-8 are the first 4 steps (2 micro-batches each), 9 the evaluation, 12 inside the sixth step.
    model = interrupt_on_call(make_model(), 12)
    result = Trainer(train_config(), model, CopyTask(4), tmp_path / "run", log=False).fit()
    assert result.interrupted and result.step == 6  # the step under way when Ctrl-C came is finished first
    assert checkpoint_dirs(tmp_path / "run")[-1].name == "step-0000006"
    assert not (tmp_path / "run" / "final").exists()
    resumed = Trainer(train_config(), make_model(), CopyTask(4), tmp_path / "run", log=False)
    resumed.fit(resume="latest")
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")  # bit-exact: dropout draws the same numbers
    a = load_model(tmp_path / "ref" / "final").state_dict()
    b = load_model(tmp_path / "run" / "final").state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_a_non_finite_step_is_skipped_with_a_warning(tmp_path):
    trainer = Trainer(train_config(max_steps=4), make_model(0.0), CopyTask(4, fail_at={2}), tmp_path, log=False)
    with pytest.warns(UserWarning, match="step 2: non-finite"):
        result = trainer.fit()
    assert result.step == 4
    assert sorted(losses(tmp_path)) == [1, 2, 4]  # step 3 (0-based 2) logged nothing
    assert all(torch.isfinite(p).all() for p in load_model(tmp_path / "final").parameters())


def test_consecutive_non_finite_steps_stop_the_run(tmp_path):
    trainer = Trainer(train_config(max_bad_steps=3), make_model(0.0), CopyTask(4, fail_at={1, 2, 3, 4}), tmp_path,
                      log=False)
    with pytest.warns(UserWarning), pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        trainer.fit()


def test_checkpoints_never_hold_non_finite_weights(tmp_path):
    trainer = Trainer(train_config(), make_model(), CopyTask(4), tmp_path, log=False)
    with torch.no_grad():
        trainer.bare_model.src_embed.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="refusing to save"):
        trainer.save_checkpoint()
    assert checkpoint_dirs(tmp_path) == []


def test_last_k_checkpoints_are_kept_and_final_is_exported(tmp_path):
    trainer = Trainer(train_config(max_steps=12, save_every=2, keep_checkpoints=2, eval_every=100), make_model(),
                      CopyTask(4), tmp_path, log=False)
    result = trainer.fit()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-0000010", "step-0000012"]
    assert result.final_dir == tmp_path / "final"
    assert {p.name for p in result.final_dir.iterdir()} == {"config.json", "model.safetensors"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(records[0])
    assert "val_loss" in records[-1]


def test_the_end_saves_once_and_only_when_the_last_step_has_no_checkpoint(tmp_path, monkeypatch):
    saved = []
    original = Trainer.save_checkpoint

    def save_out_of_sight(self):  # as another machine's process sees it: no checkpoint directory on its disk
        saved.append(self.step)
        target = original(self)
        target.rename(target.with_name(f"elsewhere-{target.name}"))
        return target

    monkeypatch.setattr(Trainer, "save_checkpoint", save_out_of_sight)
    Trainer(train_config(max_steps=8, save_every=4), make_model(), CopyTask(4), tmp_path / "a", log=False).fit()
    assert saved == [4, 8]  # step 8's periodic checkpoint is the final one, though its directory is not visible
    monkeypatch.setattr(Trainer, "save_checkpoint", lambda self: saved.append(self.step) or original(self))
    saved.clear()
    saved.clear()
    Trainer(train_config(max_steps=6, save_every=4), make_model(), CopyTask(4), tmp_path / "b", log=False).fit()
    assert saved == [4, 6]
    saved.clear()
    resumed = Trainer(train_config(max_steps=6, save_every=4), make_model(), CopyTask(4), tmp_path / "b", log=False)
    resumed.fit(resume="latest")  # already at step 6: nothing to train, and its checkpoint exists
    assert saved == []


@pytest.mark.slow
def test_training_learns_and_writes_tensorboard(tmp_path):
    trainer = Trainer(train_config(max_steps=200, eval_every=100, lr=1e-2, warmup_steps=10, decay_steps=200),
                      make_model(0.0), CopyTask(8), tmp_path)
    result = trainer.fit()
    logged = losses(tmp_path)
    assert logged[200] < 0.5 * logged[1]
    assert result.metrics["val_loss"] < 0.5 * logged[1]
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_early_stopping_on_val_loss(tmp_path):
    config = train_config(max_steps=40, eval_every=2, early_stopping_patience=2, lr=1e-9, warmup_steps=0)

    class FlatTask(CopyTask):
        def evaluate(self, model, accelerator, full):
            return {"val_loss": 1.0}

    result = Trainer(config, make_model(), FlatTask(4), tmp_path, log=False).fit()
    assert result.stopped_early and result.step == 6  # best at step 2, no improvement at 4 and 6


def test_schedule_warms_up_then_decays_to_the_floor():
    factor = lr_lambda(TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1))
    assert factor(0) < factor(5) < factor(9) < 1.0
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.55)
    assert factor(100) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = make_model(source_ngrams=(2,), ngram_buckets=16)
    decay, no_decay = parameter_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.src_embed.weight) not in decayed and id(model.source_extension.weight) not in decayed
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(id(p) not in decayed for name, p in model.named_parameters() if "norm" in name or "bias" in name)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert math.isclose(no_decay["weight_decay"], 0.0)


def test_batch_size_must_split_over_accumulation():
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(train_config(batch_size=5, grad_accum_steps=2), make_model(), CopyTask(4), "unused", log=False)


def test_timed_full_evaluations_are_logged_with_their_time(tmp_path):
    task = CopyTask(4)
    config = train_config(max_steps=3, eval_every=100, eval_at_minutes=[1e-9, 1e9])
    Trainer(config, make_model(), task, tmp_path, log=False).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "at_minutes" in r]
    assert [(r["step"], r["at_minutes"]) for r in timed] == [(1, 1e-9)]  # the second mark is never reached
    assert "val_loss" in timed[0] and timed[0]["train_minutes"] > 0
    assert all(r["train_minutes"] >= 0 for r in rows if "loss" in r)


# -- interrupted runs, their folders and their checkpoints ---------------------------------------------------------


def rows(output_dir) -> list[dict]:
    """Every row of metrics.jsonl without the timings, which differ from run to run."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "train_minutes")} for line in lines]


def run(output_dir, resume=None, model=None, **overrides):
    trainer = Trainer(train_config(**overrides), model or make_model(), CopyTask(4), output_dir, log=False)
    return trainer.fit(resume=resume)


def test_a_torn_last_log_line_is_dropped_with_a_warning_on_resume(tmp_path):
    run(tmp_path / "ref")
    run(tmp_path / "run", max_steps=4)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as log:
        log.write('{"step": 5, "loss": 1.2')  # the write a kill cut short
    with pytest.warns(UserWarning, match=r"metrics\.jsonl, line 6: not a whole JSON row"):
        run(tmp_path / "run", resume="latest")
    assert rows(tmp_path / "run") == rows(tmp_path / "ref")


def test_a_run_stopped_during_export_logs_its_final_evaluation_once(tmp_path):
    run(tmp_path / "ref")
    run(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "final")  # as if killed while exporting, after the final evaluation
    result = run(tmp_path / "run", resume="latest")
    assert result.final_dir.is_dir()
    assert rows(tmp_path / "run") == rows(tmp_path / "ref")
    assert sum("val_loss" in row and row["step"] == 8 for row in rows(tmp_path / "run")) == 1


def test_what_killed_runs_leave_is_removed_at_start(tmp_path, monkeypatch):
    run(tmp_path, max_steps=4)
    leftovers = [tmp_path / ".final.tmp-a1b2", tmp_path / "checkpoints" / ".step-0000006.tmp-c3d4",
                 tmp_path / "checkpoints" / ".rng-0000006", tmp_path / "checkpoints" / ".step-0000002.pruned",
                 tmp_path / "checkpoints" / "step-0000001"]  # half deleted: no trainer_state.json
    for path in leftovers:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".run_config.json.tmp-e5f6").write_text("{")
    with pytest.warns(UserWarning, match="removed what an interrupted run left"):
        run(tmp_path, resume="latest")
    assert not [p for p in leftovers if p.exists()] and not (tmp_path / ".run_config.json.tmp-e5f6").exists()
    # Pruning renames a checkpoint out of sight before deleting it: a kill mid-way leaves no step-N behind.
    deleted = []
    monkeypatch.setattr("seq2seq.trainer.shutil.rmtree", lambda path, **kwargs: deleted.append(path.name))
    run(tmp_path / "pruned", max_steps=12, save_every=2)
    pruned = [name for name in deleted if "step-" in name]
    assert pruned == [f".step-{step:07d}.pruned" for step in (2, 4, 6, 8)]
    assert [p.name for p in checkpoint_dirs(tmp_path / "pruned")] == ["step-0000010", "step-0000012"]


def test_a_fresh_run_into_another_runs_folder_is_refused_unless_overwrite(tmp_path):
    run(tmp_path, max_steps=12)  # an older run whose checkpoints have higher step numbers
    with pytest.raises(ValueError, match=r"holds another run \(checkpoints/step-0000008, checkpoints/step-0000012, "
                                         r"final\): continue it with resume=latest, replace it with overwrite=true"):
        run(tmp_path)
    trainer = Trainer(train_config(), make_model(), CopyTask(4), tmp_path, log=False)
    trainer.fit(overwrite=True)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-0000004", "step-0000008"]
    assert [row["step"] for row in rows(tmp_path) if "loss" in row] == list(range(1, 9))  # none of the old log


@pytest.mark.parametrize("change,keys", [({"activation": "gelu", "positions": "rotary"},
                                          "model.activation, model.positions"), ({"d_model": 64}, "model.d_model")])
def test_resuming_with_another_model_is_refused_naming_the_keys(tmp_path, change, keys):
    run(tmp_path, max_steps=4)
    with pytest.raises(ValueError, match="belongs to a run with another config") as error:
        run(tmp_path, resume="latest", model=make_model(**change))
    assert all(f"{key} " in str(error.value) for key in keys.split(", "))
    assert f"resume_allow_changes=[{keys.replace(', ', ',')}]" in str(error.value)


def test_a_listed_change_is_allowed_on_resume(tmp_path):
    run(tmp_path, max_steps=4)
    trainer = Trainer(train_config(lr=1e-3), make_model(), CopyTask(4), tmp_path, log=False)
    with pytest.warns(UserWarning, match=r"continues with changed train\.lr"):
        assert trainer.fit(resume="latest", allow_changes=["train.lr"]).step == 8


def test_output_dir_is_locked_while_a_run_uses_it(tmp_path):
    with locked(tmp_path):  # another run's lock (flock: another open file conflicts, even in this process)
        with pytest.raises(ValueError, match=f"output_dir {tmp_path} is in use by another run"):
            run(tmp_path)
    assert run(tmp_path).step == 8  # released with the run


def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run(tmp_path / "ref")
    run(tmp_path / "run", max_steps=7, save_every=2, keep_checkpoints=3)
    steps = tmp_path / "run" / "checkpoints"
    (steps / "step-0000006" / "optimizer.pt").write_bytes((steps / "step-0000006" / "optimizer.pt").read_bytes()[:99])
    (steps / "step-0000007" / "trainer_state.json").write_text('{"step": 7,')
    with pytest.raises(CheckpointError, match=r"step-0000006/optimizer\.pt: truncated or corrupt"):
        run(tmp_path / "run", resume=str(steps / "step-0000006"))
    with pytest.warns(UserWarning) as warned:
        run(tmp_path / "run", resume="latest")
    messages = [str(w.message) for w in warned]
    assert any("step-0000007/trainer_state.json: unreadable" in m for m in messages)
    assert any("step-0000006/optimizer.pt: truncated or corrupt" in m for m in messages)
    assert rows(tmp_path / "run") == rows(tmp_path / "ref")  # continued from step 4, exactly


@pytest.mark.parametrize("setting,message", [({"lr": math.inf}, "train.lr must be a number in (0, 10]"),
                                             ({"lr": 1e9}, "train.lr must be a number in (0, 10]"),
                                             ({"lr": math.nan}, "train.lr must be a number in (0, 10]"),
                                             ({"num_threads": -1}, "train.num_threads must be positive"),
                                             ({"adam_betas": [0.9, 1.5]}, "train.adam_betas")])
def test_settings_that_cannot_train_are_named(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        train_config(**setting)


def test_output_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(ValueError, match=f"output_dir {tmp_path / 'run'} is a file"):
        run(tmp_path / "run")
