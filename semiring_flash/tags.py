"""Converters between segmentations and token tag sequences (BIO / BIOES), plus run helpers.

Segments are (start, end_exclusive, label) tuples that tile [0, length).
Labels are ints; ``names`` (a list) maps them to tag suffixes. A label listed
in ``outside`` is written as ``O`` (no suffix, no boundaries), so it only
round-trips when its segments are maximal runs (``merge_outside=True``) or
single tokens (``merge_outside=False``).

Decoding of malformed tag sequences follows the usual conlleval-style repair:
an ``I-X``/``E-X`` that does not continue an open ``X`` segment starts a new one.
"""

from __future__ import annotations

import torch

from .segmentation import Segmentation

__all__ = [
    "segments_to_tags", "tags_to_segments", "segmentation_to_tags", "tags_to_segmentation",
    "merge_runs", "explode_segments", "labels_to_segments",
]

SCHEMES = ("BIO", "BIOES")


def _name(label, names):
    return str(names[label]) if names is not None else str(label)


def segments_to_tags(segments, scheme: str = "BIO", names=None, outside=None) -> list:
    """(start, end, label) tiling -> list of tags ("B-x", "I-x", "E-x", "S-x", "O")."""
    scheme = scheme.upper()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}")
    outside = set() if outside is None else ({outside} if isinstance(outside, int) else set(outside))
    tags = []
    for s, e, c in segments:
        n = e - s
        if c in outside:
            tags += ["O"] * n
            continue
        x = _name(c, names)
        if scheme == "BIO":
            tags += [f"B-{x}"] + [f"I-{x}"] * (n - 1)
        elif n == 1:
            tags.append(f"S-{x}")
        else:
            tags += [f"B-{x}"] + [f"I-{x}"] * (n - 2) + [f"E-{x}"]
    return tags


def tags_to_segments(tags, scheme: str = "BIO", names=None, outside=None, merge_outside: bool = True) -> list:
    """Tags -> (start, end, label) tiling; ``O`` tokens get label ``outside`` (required if any O)."""
    scheme = scheme.upper()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}")
    index = {str(n): i for i, n in enumerate(names)} if names is not None else None

    def label(x):
        if index is not None:
            if x not in index:
                raise ValueError(f"unknown tag label {x!r}")
            return index[x]
        return int(x)

    out = []
    cur = None  # [start, label, closed]
    for t, tag in enumerate(tags):
        if tag == "O":
            if outside is None:
                raise ValueError("tags contain 'O' but no outside label was given")
            if merge_outside and cur is not None and cur[2] == "O":
                continue  # the O-run goes on
            if cur is not None:
                out.append((cur[0], t, cur[1]))
                cur = None
            if merge_outside:
                cur = [t, outside, "O"]
            else:
                out.append((t, t + 1, outside))
            continue
        prefix, _, x = tag.partition("-")
        c = label(x)
        cont = prefix in ("I", "E") and cur is not None and cur[1] == c and cur[2] == "open"
        if not cont:
            if cur is not None:
                out.append((cur[0], t, cur[1]))
            cur = [t, c, "open"]
        if prefix in ("E", "S") and scheme == "BIOES":
            out.append((cur[0], t + 1, cur[1]))
            cur = None
    if cur is not None:
        out.append((cur[0], len(tags), cur[1]))
    return out


def segmentation_to_tags(seg: Segmentation, scheme: str = "BIO", names=None, outside=None) -> list:
    """A batched :class:`Segmentation` -> one tag list per sequence."""
    return [segments_to_tags(s, scheme, names, outside) for s in seg.segments()]


def tags_to_segmentation(tag_lists, scheme: str = "BIO", names=None, outside=None, merge_outside: bool = True,
                         T: int | None = None, device=None) -> Segmentation:
    """Tag lists -> :class:`Segmentation` (B, T)."""
    segs = [tags_to_segments(t, scheme, names, outside, merge_outside) for t in tag_lists]
    return Segmentation.from_segments(segs, T=T, device=device)


def merge_runs(segments) -> list:
    """Merge adjacent segments of the same label (per-token output of a linear-chain model -> maximal runs)."""
    out = []
    for s, e, c in segments:
        if out and out[-1][2] == c and out[-1][1] == s:
            out[-1] = (out[-1][0], e, c)
        else:
            out.append((s, e, c))
    return out


def explode_segments(segments) -> list:
    """One single-token segment per token (gold for a K = 1, linear-chain model)."""
    return [(t, t + 1, c) for s, e, c in segments for t in range(s, e)]


def labels_to_segments(labels, length: int | None = None) -> list:
    """Per-token labels (list or 1-D tensor) -> maximal runs as (start, end, label)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    labels = labels[:length] if length is not None else labels
    return merge_runs([(t, t + 1, int(c)) for t, c in enumerate(labels)])
