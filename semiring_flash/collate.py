"""Variable-length batches for the head: padding, lengths <-> masks, a DataLoader ``collate_fn``.

    features, lengths = pad_batch([x1, x2, x3])          # (B, T, H), (B,)
    tags = pad_tags([y1, y2, y3])                         # (B, T) long, -100 past each length
    loader = DataLoader(data, batch_size=32, collate_fn=collate)   # items (features, gold)

Masks follow pytorch-crf: (B, T) bool, True on the tokens of each sequence,
which must be a left-aligned prefix (``mask[:, 0]`` all True).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from .segmentation import Segmentation

__all__ = ["pad_batch", "pad_tags", "lengths_to_mask", "mask_to_lengths", "collate", "TAG_PAD"]

#: padding value of per-token tags (the ignore_index convention of torch's losses)
TAG_PAD = -100


def _check_sequences(name: str, seqs, floating: bool) -> list:
    if isinstance(seqs, torch.Tensor) or not isinstance(seqs, Sequence) or len(seqs) == 0:
        raise TypeError(f"{name} must be a non-empty list of tensors")
    for i, x in enumerate(seqs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"{name}[{i}] has no tokens (shape {tuple(x.shape)}); every sequence needs length >= 1")
        if floating != x.is_floating_point():
            raise TypeError(f"{name}[{i}] must be a {'floating-point' if floating else 'integer'} tensor, got {x.dtype}")
        if x.shape[1:] != seqs[0].shape[1:]:
            raise ValueError(f"{name}[{i}] has trailing shape {tuple(x.shape[1:])}, {name}[0] {tuple(seqs[0].shape[1:])}")
    return list(seqs)


def pad_batch(sequences, padding_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence features (T_i, H) -> padded (B, max T_i, H) and lengths (B,) long."""
    seqs = _check_sequences("sequences", sequences, floating=True)
    lengths = torch.tensor([x.shape[0] for x in seqs], dtype=torch.long, device=seqs[0].device)
    return pad_sequence(seqs, batch_first=True, padding_value=padding_value), lengths


def pad_tags(tags, pad: int = TAG_PAD) -> torch.Tensor:
    """Per-sequence integer tags (T_i,) -> (B, max T_i) long, ``pad`` past each length."""
    seqs = _check_sequences("tags", tags, floating=False)
    if seqs[0].dim() != 1:
        raise ValueError(f"tags must be 1-D per sequence, got shape {tuple(seqs[0].shape)}")
    return pad_sequence([x.long() for x in seqs], batch_first=True, padding_value=pad)


def lengths_to_mask(lengths: torch.Tensor, T: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool prefix mask (T defaults to max length)."""
    lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.dim() != 1:
        raise TypeError(f"lengths must be a 1-D integer tensor, got {lengths.dtype} of shape {tuple(lengths.shape)}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    T = (int(lengths.max()) if lengths.numel() else 0) if T is None else int(T)
    if lengths.numel() and int(lengths.max()) > T:
        raise ValueError(f"lengths must be <= T = {T}, got {lengths.tolist()}")
    return torch.arange(T, device=lengths.device) < lengths.unsqueeze(1)


def mask_to_lengths(mask: torch.Tensor, batch: int | None = None, T: int | None = None) -> torch.Tensor:
    """(B, T) bool prefix mask -> (B,) long lengths; a clear error unless each row is a left-aligned prefix."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (B, T), got "
                        f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    want = (batch if batch is not None else "B", T if T is not None else "T")
    if mask.dim() != 2 or (batch is not None and mask.shape[0] != batch) or (T is not None and mask.shape[1] != T) \
            or mask.shape[1] == 0:
        raise ValueError(f"mask must have shape (B, T) = {want} with T >= 1, got {tuple(mask.shape)}")
    if not bool(mask[:, 0].all()):
        bad = int(torch.nonzero(~mask[:, 0])[0])
        raise ValueError(f"mask[:, 0] must be all True (every sequence has a first token); sequence {bad} does not")
    lengths = mask.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device) < lengths.unsqueeze(1)
    if not torch.equal(prefix, mask):
        bad = int(torch.nonzero((prefix != mask).any(1))[0])
        raise ValueError(f"mask must be a left-aligned prefix (True then False) in every row; sequence {bad} is not")
    return lengths.long()


def collate(batch, padding_value: float = 0.0, tag_pad: int = TAG_PAD) -> dict:
    """A ``DataLoader`` ``collate_fn`` for items ``(features (T_i, H), gold)``.

    ``gold`` is per-token integer tags (T_i,) (padded with ``tag_pad``) or a
    list of (start, end, label) segments (gathered into a Segmentation (B, T)).
    Returns ``dict(features=(B, T, H), lengths=(B,), mask=(B, T), gold=...)``,
    ready for ``head.loss(out["features"], out["lengths"], out["gold"])``.
    """
    if not isinstance(batch, Sequence) or len(batch) == 0 or any(not isinstance(i, Sequence) or len(i) != 2 for i in batch):
        raise TypeError("collate needs a non-empty list of (features, gold) pairs")
    feats, golds = zip(*batch)
    features, lengths = pad_batch(list(feats), padding_value)
    T = features.shape[1]
    if all(isinstance(g, torch.Tensor) for g in golds):
        for i, (g, L) in enumerate(zip(golds, lengths.tolist())):
            if g.shape != (L,):
                raise ValueError(f"gold tags of item {i} have shape {tuple(g.shape)}, its features {L} tokens")
        gold = pad_tags(list(golds), tag_pad)
    else:
        gold = Segmentation.from_segments([list(g) for g in golds], T=T, device=features.device)
        if not torch.equal(gold.lengths.cpu(), lengths.cpu()):
            raise ValueError(f"gold segments cover {gold.lengths.tolist()} tokens, the features {lengths.tolist()}")
    return dict(features=features, lengths=lengths, mask=lengths_to_mask(lengths, T), gold=gold)
