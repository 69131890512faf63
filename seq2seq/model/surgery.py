"""Changing a trained model: fine-tuning's `model:` section (a new dropout, or an extension added to a pretrained
model that has none). Every pretrained weight is kept; an added extension starts so that the model computes what
it did (n-gram tables at zero) or mixes it evenly with what the extension adds (the copy head's gate)."""

from __future__ import annotations

from typing import Any

from seq2seq.model.extensions import EXTENSION_PREFIXES
from seq2seq.model.transformer import Transformer


def adapt(model: Transformer, changes: dict[str, Any]) -> Transformer:
    """`model` with `changes` (keys of `ModelConfig.ADAPTABLE_KEYS`) applied to its config: a new model holding
    every weight of `model`; only an extension the changes add is new. Raises ValueError naming the key when a
    change would need other weights (an extension's shape changed)."""
    config = model.config.adapted(changes)
    if config == model.config:
        return model
    parameter = next(model.parameters())
    adapted = Transformer(config).to(parameter.device, parameter.dtype)
    state = model.state_dict()
    expected = adapted.state_dict()
    for name, tensor in state.items():
        if name in expected and expected[name].shape != tensor.shape:
            raise ValueError(f"model.source_ngrams / model.ngram_buckets: the pretrained model's {name} has shape "
                             f"{tuple(tensor.shape)}, the new settings need {tuple(expected[name].shape)}")
    state = {name: tensor for name, tensor in state.items() if name in expected}  # a removed extension's weights
    result = adapted.load_state_dict(state, strict=False)
    assert all(key.startswith(EXTENSION_PREFIXES) for key in result.missing_keys), result
    return adapted.train(model.training)
