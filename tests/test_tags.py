"""BIO/BIOES converters round-trip segmentations; run helpers."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import semiring_flash as sf
from semiring_flash.tags import (
    explode_segments,
    labels_to_segments,
    merge_runs,
    segmentation_to_tags,
    segments_to_tags,
    tags_to_segmentation,
    tags_to_segments,
)

NAMES = ["O", "PER", "LOC", "ORG"]


@st.composite
def segmentations(draw, outside=None, max_len=12, C=4):
    L = draw(st.integers(1, max_len))
    cuts = sorted(draw(st.sets(st.integers(1, L - 1), max_size=L - 1))) if L > 1 else []
    bounds = [0] + cuts + [L]
    segs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        c = draw(st.integers(0, C - 1))
        if outside is not None and c == outside and segs and segs[-1][2] == outside:
            segs[-1] = (segs[-1][0], e, outside)  # O segments are maximal runs
        else:
            segs.append((s, e, c))
    return segs


@settings(max_examples=200, deadline=None)
@given(segmentations())
def test_round_trip_without_outside(segs):
    for scheme in ("BIO", "BIOES"):
        tags = segments_to_tags(segs, scheme, NAMES)
        assert len(tags) == segs[-1][1]
        assert tags_to_segments(tags, scheme, NAMES) == segs
        assert tags_to_segments(segments_to_tags(segs, scheme), scheme) == segs  # integer labels


@settings(max_examples=200, deadline=None)
@given(segmentations(outside=0))
def test_round_trip_with_outside_runs(segs):
    for scheme in ("BIO", "BIOES"):
        tags = segments_to_tags(segs, scheme, NAMES, outside=0)
        assert all(t == "O" for (s, e, c) in segs if c == 0 for t in tags[s:e])
        assert tags_to_segments(tags, scheme, NAMES, outside=0) == segs


def test_outside_per_token_and_examples():
    segs = [(0, 2, 0), (2, 4, 1), (4, 5, 2), (5, 6, 0)]
    assert segments_to_tags(segs, "BIO", NAMES, outside=0) == ["O", "O", "B-PER", "I-PER", "B-LOC", "O"]
    assert segments_to_tags(segs, "BIOES", NAMES, outside=0) == ["O", "O", "B-PER", "E-PER", "S-LOC", "O"]
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "O"]
    assert tags_to_segments(tags, "BIO", NAMES, outside=0, merge_outside=False) == [
        (0, 1, 0), (1, 2, 0), (2, 4, 1), (4, 5, 2), (5, 6, 0)]


def test_malformed_tags_are_repaired():
    # I- without an open segment of that label starts a new one (conlleval convention)
    assert tags_to_segments(["I-PER", "I-PER", "I-LOC", "B-LOC", "E-LOC"], "BIOES", NAMES) == [
        (0, 2, 1), (2, 3, 2), (3, 5, 2)]
    assert tags_to_segments(["B-PER", "E-PER", "I-PER"], "BIOES", NAMES) == [(0, 2, 1), (2, 3, 1)]


def test_batched_segmentation_round_trip():
    segs = [[(0, 3, 1), (3, 4, 2)], [(0, 1, 0), (1, 2, 3)]]
    seg = sf.Segmentation.from_segments(segs, T=5)
    tags = segmentation_to_tags(seg, "BIOES", NAMES)
    back = tags_to_segmentation(tags, "BIOES", NAMES, T=5)
    assert back.segments() == segs
    assert torch.equal(back.labels, seg.labels) and torch.equal(back.starts, seg.starts)


def test_run_helpers():
    segs = [(0, 3, 1), (3, 4, 1), (4, 6, 0)]
    ex = explode_segments(segs)
    assert len(ex) == 6 and all(e - s == 1 for s, e, _ in ex)
    assert merge_runs(ex) == [(0, 4, 1), (4, 6, 0)]
    assert labels_to_segments(torch.tensor([2, 2, 0, 1, 1, 9]), length=5) == [(0, 2, 2), (2, 3, 0), (3, 5, 1)]
