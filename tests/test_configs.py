"""Every shipped config parses, names only known keys, and builds its model."""

from pathlib import Path

import pytest

from finetune.recipe import load_config as load_finetune_config
from pretrain.recipe import load_config as load_pretrain_config
from seq2seq.config import load_yaml
from seq2seq.evaluation import BUILTIN_DIR, load_task
from seq2seq.model import ModelConfig, count_parameters

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "pretrain").glob("*.yaml")), ids=lambda p: p.stem)
def test_pretrain_configs_build_their_model(path):
    config = load_pretrain_config(path)
    model = ModelConfig.from_dict({**config.model, "vocab_size": 4096})
    assert count_parameters(model) > 0
    assert any("seq2seq pretrain --config" in line for line in path.read_text().splitlines()[:4])


@pytest.mark.parametrize("path", sorted((CONFIGS / "finetune").glob("*.yaml")), ids=lambda p: p.stem)
def test_finetune_configs_parse(path):
    assert load_finetune_config(path).train.max_steps > 0
    assert any("seq2seq finetune --config" in line for line in path.read_text().splitlines()[:4])


@pytest.mark.parametrize("path", sorted((CONFIGS / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_presets_are_valid(path):
    ModelConfig.from_dict({**load_yaml(path), "vocab_size": 4096})


@pytest.mark.parametrize("path", sorted(BUILTIN_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_builtin_eval_tasks_ship_with_the_package_and_parse(path):
    assert load_task(path.stem).name == path.stem  # found by name, wherever the package is installed
    assert "{mixture}" in load_task(path.stem).data
