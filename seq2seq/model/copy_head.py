"""Extension at the output distribution: a pointer-generator copy head (See, Liu & Manning, 2017,
https://arxiv.org/abs/1704.04368), not in the paper.

Next to the vocabulary softmax, one attention head over the encoder output whose weights are a distribution over
source positions, and so over the tokens found there; a gate mixes the two,

    p(w) = g * softmax(logits)(w) + (1 - g) * sum of attention[i] over source positions i holding w,

with g = sigmoid(linear([decoder state; attended encoder output])). Copying a name out of the prompt then takes
one attention pattern instead of having to bring the name's identity through cross-attention into the decoder
state and out of the tied vocabulary projection, which a small model fails to learn.

Subword copying: a name is several tokens (PROSPERO is PR O S PER O), and having copied one the head has to point
at the source position after it. The attention scores get a learned bonus, `follow`, at each position whose
previous token is the token just written (the decoder's input at this step): a fixed pattern, like an induction
head's, which needs no state carried between steps, so decoding with a cache is unchanged.

Shapes: b batch, t target positions, s source positions, n kept target rows, D d_model, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.model.config import ModelConfig


class CopyAttention(nn.Module):
    """The output head: log p (b, t, V) of the gated mixture, from the decoder states and the source."""

    GATE_BIAS = 0.0  # start undecided between generating and copying
    FOLLOW_INIT = 3.0  # a position after the token just written starts e^3 = 20 times as likely

    def __init__(self, config: ModelConfig):
        super().__init__()
        d_model = config.d_model
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Linear(2 * d_model, 1)
        self.follow = nn.Parameter(torch.tensor(0.0))

    def reset_parameters(self) -> None:
        """After the model's generic initialisation of its linear layers: the gate's bias and the follow bonus."""
        nn.init.constant_(self.gate.bias, self.GATE_BIAS)
        nn.init.constant_(self.follow, self.FOLLOW_INIT)

    def weights(self, hidden: Tensor, encoder_out: Tensor, src_ids: Tensor, tgt_ids: Tensor,
                src_padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The copy attention (b, t, s) over source positions, in fp32, and the gate's logit (b, t, 1): g is its
        sigmoid. tgt_ids (b, t) are the decoder's inputs at these steps, the tokens written before them."""
        scores = self.query(hidden) @ self.key(encoder_out).transpose(1, 2) * hidden.shape[-1] ** -0.5
        follows = F.pad(src_ids[:, None, :-1] == tgt_ids[:, :, None], (1, 0))  # (b, t, s): src[j - 1] == written
        scores = scores + self.follow * follows
        if src_padding_mask is not None:
            scores = scores.masked_fill(src_padding_mask[:, None, :], float("-inf"))
        attention = scores.float().softmax(-1)
        context = attention.to(encoder_out.dtype) @ encoder_out
        return attention, self.gate(torch.cat([hidden, context.to(hidden.dtype)], -1)).float()

    def forward(self, hidden: Tensor, logits: Tensor, encoder_out: Tensor, src_ids: Tensor, tgt_ids: Tensor,
                src_padding_mask: Tensor | None) -> Tensor:
        """hidden (b, t, D), logits (b, t, V), encoder_out (b, s, D), src_ids (b, s), tgt_ids (b, t) -> log p
        (b, t, V), fp32."""
        attention, gate = self.weights(hidden, encoder_out, src_ids, tgt_ids, src_padding_mask)
        b, t, s = attention.shape
        copy = attention.new_zeros(b, t, logits.shape[-1]).scatter_add_(-1, src_ids[:, None, :].expand(b, t, s),
                                                                          attention)
        return mix(F.log_softmax(logits.float(), -1), copy, gate)

    def losses(self, hidden: Tensor, project: Callable[[Tensor], Tensor], keep: Tensor, targets: Tensor,
               encoder_out: Tensor, src_ids: Tensor, tgt_ids: Tensor, src_padding_mask: Tensor | None,
               label_smoothing: float) -> Tensor:
        """The per-row cross-entropy (n,) of the mixture at the target rows `keep` (b, t) selects, smoothed
        towards the uniform distribution. The mixture over the whole vocabulary is never built, nor log p_vocab:
        outside the row's source tokens the mixture is log p_vocab + log g, whose mean over the vocabulary is that
        of the logits less their logsumexp, so the smoothing term adds up the difference at the source's distinct
        tokens only (each of a token's positions counts 1/its count; absent tokens get no 1e-12 floor here,
        unlike in `mix`). Why: building the (n, V) mixture makes a smoothed step markedly slower."""
        attention, gate = self.weights(hidden, encoder_out, src_ids, tgt_ids, src_padding_mask)
        logits = project(hidden[keep]).float()  # (n, V)
        rows = keep.nonzero()[:, 0]
        src = src_ids[rows]  # (n, s)
        gate = gate[keep]  # (n, 1)
        log_z = logits.logsumexp(-1, keepdim=True)  # (n, 1)
        copy = (attention[keep] * (src == targets[:, None])).sum(-1)
        losses = -mix(logits.gather(-1, targets[:, None])[:, 0] - log_z[:, 0], copy, gate[:, 0])
        if not label_smoothing:
            return losses
        same = (src_ids[:, :, None] == src_ids[:, None, :]).to(attention.dtype)  # (b, s, s)
        at_source = (attention @ same)[keep]  # (n, s): each source position's token's whole copy probability
        vocab_at_source = logits.gather(-1, src) - log_z
        mixed = mix(vocab_at_source, at_source, gate)
        differences = (mixed - vocab_at_source - F.logsigmoid(gate)) / same.sum(-1)[rows]
        mean_log_p = (logits.mean(-1) - log_z[:, 0] + F.logsigmoid(gate[:, 0])
                      + differences.sum(-1) / logits.shape[-1])
        return (1 - label_smoothing) * losses - label_smoothing * mean_log_p


def mix(log_vocab: Tensor, copy: Tensor, gate: Tensor) -> Tensor:
    """log(g * p_vocab + (1 - g) * p_copy) from log p_vocab, p_copy and g's logit. Tokens absent from the source
    get a copy probability of 1e-12 instead of 0 (a log of 0 has no gradient)."""
    return torch.logaddexp(log_vocab + F.logsigmoid(gate), copy.clamp_min(1e-12).log() + F.logsigmoid(-gate))
