"""The checkpoint directory: bit-exact round trip, atomic writes, and errors that name the bad file."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from seq2seq.checkpoint import CheckpointError, load_model, save_pretrained
from seq2seq.model import ModelConfig, Transformer


def make_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    config = dict(vocab_size=40, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32,
                  dropout=0.0, max_seq_len=32)
    config.update(overrides)
    return Transformer(ModelConfig(**config))


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_is_bit_exact(tmp_path, tied):
    model = make_model(tie_embeddings=tied, positions="learned", copy_attention=tied, source_ngrams=(2, 3),
                       ngram_buckets=64)
    torch.nn.init.normal_(model.source_extension.weight)
    save_pretrained(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    if tied:  # tying survives the round trip: one matrix, not two copies
        assert loaded.src_embed.weight is loaded.tgt_embed.weight
    src = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.eval()(src, src), loaded(src, src))


def test_save_replaces_an_existing_checkpoint_atomically(tmp_path):
    target = tmp_path / "ckpt"
    save_pretrained(make_model(), target)
    second = make_model(d_model=32)
    save_pretrained(second, target)
    assert load_model(target).config.d_model == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary directories left behind


def test_failed_save_leaves_the_previous_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    save_pretrained(make_model(), target)

    def crash(_directory):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_pretrained(make_model(d_model=32), target, extra=crash)
    assert load_model(target).config.d_model == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    save_pretrained(make_model(), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "ckpt")


def test_corrupt_files_are_named(tmp_path):
    save_pretrained(make_model(), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt"):
        load_model(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*corrupt"):
        load_model(tmp_path / "ckpt")


def test_weights_that_do_not_match_the_config_are_named(tmp_path):
    save_pretrained(make_model(), tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["d_ff"] = 16
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model.safetensors.*shape"):
        load_model(tmp_path / "ckpt")
    config["n_heads"] = 3  # 16 is not divisible by 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*n_heads"):
        load_model(tmp_path / "ckpt")


def test_a_config_larger_than_its_weights_is_refused_before_the_model_is_built(tmp_path):
    model = make_model()
    save_pretrained(model, tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "d_model": 2**40, "d_ff": 2**40}))  # building it needs petabytes
    with pytest.raises(CheckpointError, match=rf"config\.json: describes a model of [\d,]+ parameters, but "
                                              rf".*model\.safetensors holds {model.num_parameters():,} values"):
        load_model(tmp_path / "ckpt")


def rewrite_tensor(directory, name: str, change) -> None:
    path = directory / "model.safetensors"
    state = load_file(str(path))
    state[name] = change(state[name])
    save_file(state, str(path))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    save_pretrained(make_model(), tmp_path / "ckpt")
    name = "decoder.layers.0.feed_forward.w1.weight"

    def poison(tensor):
        tensor[3, 5] = value
        return tensor

    rewrite_tensor(tmp_path / "ckpt", name, poison)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor {name} holds NaN or infinite values"):
        load_model(tmp_path / "ckpt")


def test_weights_that_are_not_floating_point_are_refused_naming_the_tensor(tmp_path):
    save_pretrained(make_model(), tmp_path / "ckpt")
    name = "encoder.layers.0.self_attn.qkv_proj.weight"
    rewrite_tensor(tmp_path / "ckpt", name, lambda tensor: (tensor * 100).to(torch.int8))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor {name} has dtype int8"):
        load_model(tmp_path / "ckpt")


@pytest.mark.slow
def test_info_command_prints_config_and_parameter_count(tmp_path):
    model = make_model()
    save_pretrained(model, tmp_path / "ckpt")
    result = subprocess.run([sys.executable, "-m", "seq2seq.cli", "info", "--model", str(tmp_path / "ckpt"),
                             "--json"], capture_output=True, text=True, check=True)
    info = json.loads(result.stdout)
    assert info["parameters"] == model.num_parameters()
    assert info["config"]["d_model"] == 16
    assert info["device"] == "cpu"
