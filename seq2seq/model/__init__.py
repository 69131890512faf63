"""The model: `Transformer` (transformer.py, the paper's model in its section order) and `ModelConfig`
(config.py); decoder caches (cache.py); two opt-in extensions (extensions.py: copy_head.py, ngrams.py); changing a
trained model (surgery.py) and counting parameters (parameters.py)."""

from seq2seq.model.cache import DecoderCache, StaticDecoderCache
from seq2seq.model.config import ModelConfig
from seq2seq.model.copy_head import CopyAttention
from seq2seq.model.ngrams import NGramEmbedding
from seq2seq.model.parameters import count_parameters
from seq2seq.model.surgery import adapt
from seq2seq.model.transformer import (
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    SublayerConnection,
    TokenEmbedding,
    Transformer,
)

__all__ = [
    "CopyAttention",
    "DecoderCache",
    "LearnedPositionalEmbedding",
    "ModelConfig",
    "MultiHeadAttention",
    "NGramEmbedding",
    "StaticDecoderCache",
    "SublayerConnection",
    "TokenEmbedding",
    "Transformer",
    "adapt",
    "count_parameters",
]
