"""Right-padding of token-id lists into a batch tensor with its padding mask."""

from __future__ import annotations

import torch


def pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-pad rows to one length: (ids (b, n), mask (b, n) True at padding), the mask None when no row
    needed padding (so attention can take its unmasked fast path)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    if all(len(r) == length for r in rows):
        return ids, None
    lengths = torch.tensor([len(r) for r in rows])
    return ids, torch.arange(length)[None, :] >= lengths[:, None]


def right_pad(rows, pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Id lists as one right-padded (b, n) tensor on `device`, and its padding mask (True at pad; None when no
    row is padded, which lets attention skip the mask). Every row needs a token."""
    if any(len(ids) == 0 for ids in rows):
        raise ValueError("every source needs at least one token")
    ids, mask = pad([list(row) for row in rows], pad_id)
    return ids.to(device), None if mask is None else mask.to(device)
