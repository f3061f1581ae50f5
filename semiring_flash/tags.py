"""Converters between segmentations and token tag sequences (BIO / BIOES / BMES), plus run helpers.

Segments are (start, end_exclusive, label) tuples that tile [0, length).
Labels are ints; ``names`` (a list) maps them to tag suffixes. A label listed
in ``outside`` is written as ``O`` (no suffix, no boundaries), so it only
round-trips when its segments are maximal runs (``merge_outside=True``) or
single tokens (``merge_outside=False``).

Decoding of malformed tag sequences follows the usual conlleval-style repair:
an ``I-X``/``E-X`` that does not continue an open ``X`` segment starts a new one.
BMES is BIOES with ``M`` for ``I`` (and usually no ``O``); a tag without a
type suffix (``"B"``, ``"M"``, ...) has label 0.

Batched, vectorised forms work on integer tag ids over a tag vocabulary (a list
of tag strings in any order, e.g. ``tag_vocab("BIO", ["PER", "LOC"], outside="O")``):
``tag_ids_to_segmentation`` / ``segmentation_to_tag_ids``; per-token label
tensors convert with ``token_labels_to_segmentation``. ``transition_mask``
gives the grammar of a scheme over a tag vocabulary, ready for a K = 1
``SemiCRFHead`` (a linear-chain CRF over tags).
"""

from __future__ import annotations

import torch

from .segmentation import Segmentation, check_tiling, segment_lists

__all__ = [
    "segments_to_tags", "tags_to_segments", "segmentation_to_tags", "tags_to_segmentation",
    "merge_runs", "explode_segments", "labels_to_segments",
    "tag_vocab", "transition_mask", "tag_ids_to_segmentation", "segmentation_to_tag_ids",
    "token_labels_to_segmentation",
]

SCHEMES = ("BIO", "BIOES", "BMES")
_PREFIXES = {"BIO": "BI", "BIOES": "BIES", "BMES": "BMES"}


def _scheme(scheme: str) -> str:
    s = str(scheme).upper()
    if s not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return s


def _name(label, names):
    return str(names[label]) if names is not None else str(label)


def _tag(prefix: str, x: str) -> str:
    return prefix if x == "" else f"{prefix}-{x}"  # an empty name: bare prefixes (BMES word segmentation)


def segments_to_tags(segments, scheme: str = "BIO", names=None, outside=None) -> list:
    """(start, end, label) tiling of [0, length) -> list of tags ("B-x", "I-x", "E-x", "S-x", "O").

    The segments must tile in order from 0 with int fields and labels that ``names`` covers
    (else ValueError / TypeError naming the segment)."""
    scheme = _scheme(scheme)
    inside = "M" if scheme == "BMES" else "I"
    outside = set() if outside is None else ({outside} if isinstance(outside, int) else set(outside))
    (segments,) = segment_lists([list(segments)], "segments")
    check_tiling(segments, "segments")
    for seg in segments:
        if names is not None and seg[2] >= len(names) and seg[2] not in outside:
            raise ValueError(f"segment {seg}: label {seg[2]} has no name (names has {len(names)})")
    tags = []
    for s, e, c in segments:
        n = e - s
        if c in outside:
            tags += ["O"] * n
            continue
        x = _name(c, names)
        if scheme == "BIO":
            tags += [_tag("B", x)] + [_tag("I", x)] * (n - 1)
        elif n == 1:
            tags.append(_tag("S", x))
        else:
            tags += [_tag("B", x)] + [_tag(inside, x)] * (n - 2) + [_tag("E", x)]
    return tags


def _label_of(names):
    """tag label string -> label id: its index in ``names``, or the string as an int."""
    index = {str(n): i for i, n in enumerate(names)} if names is not None else None

    def label(x):
        if x == "":  # a bare prefix ("B", "M", ...): single-type scheme
            return 0
        if index is not None:
            if x not in index:
                raise ValueError(f"unknown tag label {x!r}")
            return index[x]
        return int(x)

    return label


def tags_to_segments(tags, scheme: str = "BIO", names=None, outside=None, merge_outside: bool = True) -> list:
    """Tags -> (start, end, label) tiling; ``O`` tokens get label ``outside`` (required if any O)."""
    scheme = _scheme(scheme)
    label = _label_of(names)
    if isinstance(tags, str):
        raise TypeError(f"tags must be a sequence of tag strings, got the string {tags!r}")
    prefixes = set(_PREFIXES[scheme])

    out = []
    cur = None  # [start, label, closed]
    for t, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise TypeError(f"tag {t} must be a string, got {tag!r}")
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
        if prefix not in prefixes:  # a typo, lowercase or another scheme's tag is not repaired, it is refused
            raise ValueError(f"tag {t} {tag!r}: not a {scheme} tag (prefixes {'/'.join(_PREFIXES[scheme])}, or O)")
        prefix = "I" if prefix == "M" else prefix
        try:
            c = label(x)
        except ValueError as err:
            raise ValueError(f"tag {t} {tag!r}: {err}") from None
        if c < 0:
            raise ValueError(f"tag {t} {tag!r}: labels are >= 0")
        cont = prefix in ("I", "E") and cur is not None and cur[1] == c and cur[2] == "open"
        if not cont:
            if cur is not None:
                out.append((cur[0], t, cur[1]))
            cur = [t, c, "open"]
        if prefix in ("E", "S") and scheme != "BIO":
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
    if len(tag_lists) == 0:
        raise ValueError("tag_lists is empty: give one tag list per sequence")
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
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= len(labels):
            raise ValueError(f"length must be an int in [0, {len(labels)}], got {length!r}")
        labels = labels[:length]
    (segs,) = segment_lists([[(t, t + 1, c) for t, c in enumerate(labels)]], "labels")  # ints >= 0, not truncated
    return merge_runs(segs)


# ---------------------------------------------------------------------------------------------
# vectorised forms over integer tag ids
_B, _I, _E, _S, _O = range(5)
_CODE = {"B": _B, "I": _I, "M": _I, "E": _E, "S": _S}


def tag_vocab(scheme: str, names, outside: str | None = None) -> list[str]:
    """A tag vocabulary: ``outside`` (if given) first, then every prefix of the scheme for each name.

    ``tag_vocab("BIO", ["PER", "LOC"], "O") == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]``;
    an empty name gives bare prefixes (``tag_vocab("BMES", [""]) == ["B", "M", "E", "S"]``).
    """
    scheme = _scheme(scheme)
    vocab = [] if outside is None else [str(outside)]
    return vocab + [_tag(p, str(x)) for x in names for p in _PREFIXES[scheme]]


def _parse_vocab(vocab, scheme: str):
    """Per tag: (prefix code, type string); validates prefixes against the scheme."""
    if isinstance(vocab, str) or not hasattr(vocab, "__len__") or len(vocab) == 0:
        raise TypeError(f"vocab must be a non-empty list of tag strings, got {vocab!r}")
    out = []
    for tag in vocab:
        if tag == "O":
            out.append((_O, None))
            continue
        prefix, _, x = str(tag).partition("-")
        if prefix not in _PREFIXES[scheme]:
            raise ValueError(f"tag {tag!r} is not a {scheme} tag (prefixes {list(_PREFIXES[scheme])} or 'O')")
        out.append((_CODE[prefix], x))
    return out


def transition_mask(scheme: str, vocab) -> dict:
    """The grammar of ``scheme`` over a tag vocabulary, as head arguments.

    Returns ``dict(allowed_transitions=(n, n) bool [prev, next], allowed_start=(n,), allowed_end=(n,))``
    for ``SemiCRFHead(H, len(vocab), 1, **transition_mask(scheme, vocab))``:

    - BIO: ``I-X`` only after ``B-X`` or ``I-X`` (never first); anything else anywhere.
    - BIOES / BMES: after ``B-X`` or ``I-X``/``M-X`` only ``I-X``/``M-X`` or ``E-X``; after ``E``, ``S``
      or ``O`` only ``B``, ``S`` or ``O``; a sequence starts with ``B``, ``S`` or ``O`` and ends with
      ``E``, ``S`` or ``O``.
    """
    scheme = _scheme(scheme)
    parsed = _parse_vocab(vocab, scheme)
    n = len(parsed)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    opens = (_B, _I)  # prefixes after which a segment is still open
    for i, (pa, xa) in enumerate(parsed):
        for j, (pb, xb) in enumerate(parsed):
            continues = pb in (_I, _E)
            if scheme == "BIO":
                allowed[i, j] = not continues or (pa in opens and xa == xb)
            elif pa in opens:  # inside an open segment: continue it with the same type
                allowed[i, j] = continues and xa == xb
            else:
                allowed[i, j] = not continues
    start = torch.tensor([p not in (_I, _E) for p, _ in parsed])
    end = torch.tensor([scheme == "BIO" or p in (_E, _S, _O) for p, _ in parsed])
    return dict(allowed_transitions=allowed, allowed_start=start, allowed_end=end)


def _check_ids(name: str, ids, n: int, valid: torch.Tensor) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"{name} must be an integer tensor (B, T), got "
                        f"{ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    bad = valid & ((ids < 0) | (ids >= n))
    if bad.any():
        b, t = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(f"{name} must lie in [0, {n}) inside the lengths; sequence {b} has {int(ids[b, t])} at token {t}")
    return ids.long()


def _lengths_for(ids: torch.Tensor, lengths) -> torch.Tensor:
    if ids.dim() != 2:
        raise ValueError(f"expected a (B, T) tensor, got shape {tuple(ids.shape)}")
    B, T = ids.shape
    if lengths is None:
        return torch.full((B,), T, dtype=torch.long, device=ids.device)
    lengths = torch.as_tensor(lengths, device=ids.device)
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.shape != (B,):
        raise ValueError(f"lengths must be an integer tensor of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}")
    if bool(((lengths < 1) | (lengths > T)).any()):
        raise ValueError(f"lengths must lie in [1, {T}], got {lengths.tolist()}")
    return lengths.long()


def token_labels_to_segmentation(labels: torch.Tensor, lengths=None, num_labels: int | None = None,
                                 runs: bool = True) -> Segmentation:
    """Per-token labels (B, T) -> :class:`Segmentation`, vectorised.

    ``runs=True``: maximal runs of one label are segments; ``runs=False``: every
    token is its own segment (a K = 1, linear-chain reading). Positions at
    t ≥ lengths[b] are padding and may hold anything (e.g. −100).
    """
    lengths = _lengths_for(labels, lengths)
    valid = torch.arange(labels.shape[1], device=labels.device) < lengths.unsqueeze(1)
    labels = _check_ids("labels", labels, num_labels if num_labels is not None else 2**62, valid)
    starts = valid.clone()
    if runs:
        starts[:, 1:] &= labels[:, 1:] != labels[:, :-1]
    return Segmentation(torch.where(valid, labels, -1), starts, lengths)


def tag_ids_to_segmentation(tag_ids: torch.Tensor, vocab, scheme: str = "BIO", names=None, outside: int | None = None,
                            lengths=None, merge_outside: bool = True) -> Segmentation:
    """Tag ids (B, T) over ``vocab`` -> :class:`Segmentation`, vectorised (same rules as :func:`tags_to_segments`).

    The segment label of ``X-name`` is ``names.index(name)`` (``int(name)`` without
    names; 0 for a bare prefix); ``O`` tokens get label ``outside``, as maximal
    runs (``merge_outside``) or single tokens. Padding (t ≥ lengths) may hold anything.
    """
    scheme = _scheme(scheme)
    parsed = _parse_vocab(vocab, scheme)
    if any(p == _O for p, _ in parsed) and outside is None:
        raise ValueError("vocab has 'O' but no outside label was given")
    named = _label_of(names)

    def label(x):
        return int(outside) if x is None else named(x)

    lengths = _lengths_for(tag_ids, lengths)
    B, T = tag_ids.shape
    dev = tag_ids.device
    valid = torch.arange(T, device=dev) < lengths.unsqueeze(1)
    ids = _check_ids("tag_ids", tag_ids, len(parsed), valid).clamp(0, len(parsed) - 1)
    prefix = torch.tensor([p for p, _ in parsed], device=dev)[ids]
    lab = torch.tensor([label(x) for _, x in parsed], device=dev)[ids]
    is_o = prefix == _O
    prev_open = torch.zeros_like(valid)  # the previous token leaves a segment of its label open
    prev_open[:, 1:] = (prefix[:, :-1] == _B) | (prefix[:, :-1] == _I)  # E and S close their segment
    same = torch.zeros_like(valid)
    same[:, 1:] = lab[:, 1:] == lab[:, :-1]
    continues = ((prefix == _I) | (prefix == _E)) & prev_open & same
    if merge_outside:
        prev_o = torch.zeros_like(valid)
        prev_o[:, 1:] = is_o[:, :-1]
        continues = continues | (is_o & prev_o)
    starts = valid & ~continues
    starts[:, 0] = True
    return Segmentation(torch.where(valid, lab, -1), starts, lengths)


def segmentation_to_tag_ids(seg: Segmentation, vocab, scheme: str = "BIO", names=None, outside: int | None = None,
                            pad: int = -100) -> torch.Tensor:
    """:class:`Segmentation` (..., T) -> tag ids over ``vocab`` (..., T), ``pad`` past the lengths and over
    the empty segmentation (labels −1: a sequence no segmentation fits); vectorised."""
    scheme = _scheme(scheme)
    parsed = _parse_vocab(vocab, scheme)
    index = {str(n): i for i, n in enumerate(names)} if names is not None else None
    n_labels = int(max(int(seg.labels.max()) + 1, 1 if outside is None else int(outside) + 1,
                       len(names) if names is not None else 0))
    table = torch.full((5, n_labels), -1, dtype=torch.long)
    for i, (p, x) in enumerate(parsed):
        if p == _O:
            if outside is not None:
                table[_O, int(outside)] = i
            continue
        c = 0 if x == "" else (index[x] if index is not None and x in index else (None if index is not None else int(x)))
        if c is not None and c < n_labels:
            table[p, c] = i
    table = table.to(seg.labels.device)
    valid = seg.valid() & (seg.labels >= 0)
    labels = seg.labels.clamp(min=0)
    starts = seg.starts & valid
    last = torch.zeros_like(starts)
    last[..., :-1] = starts[..., 1:]
    T = seg.T
    last |= torch.arange(T, device=labels.device) == (seg.lengths.expand(labels.shape[:-1]).unsqueeze(-1) - 1)
    if scheme == "BIO":
        prefix = torch.where(starts, _B, _I)
    else:
        prefix = torch.where(starts & last, _S, torch.where(starts, _B, torch.where(last, _E, _I)))
    if outside is not None:
        prefix = torch.where(labels == int(outside), _O, prefix)
    ids = table[prefix, labels]
    missing = valid & (ids < 0)
    if missing.any():
        where = torch.nonzero(missing)[0].tolist()
        raise ValueError(f"vocab has no {'BIESO'[int(prefix[tuple(where)])]} tag for label {int(labels[tuple(where)])} "
                         f"(needed at {tuple(where)})")
    return torch.where(valid, ids, torch.full_like(ids, pad))
