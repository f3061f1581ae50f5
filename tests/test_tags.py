"""BIO/BIOES converters round-trip segmentations; run helpers."""

from __future__ import annotations

import pytest
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


# ---------------------------------------------------------------------------------------------
# vectorised tag-id conversions and grammars, checked against the string converters above
from semiring_flash.tags import (  # noqa: E402
    segmentation_to_tag_ids,
    tag_ids_to_segmentation,
    tag_vocab,
    token_labels_to_segmentation,
    transition_mask,
)

TYPES = ["PER", "LOC", "ORG"]  # labels 0..2; O is label 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2 * len(TYPES) + 2), min_size=1, max_size=9), min_size=1, max_size=4),
       st.sampled_from(["BIO", "BIOES", "BMES"]), st.booleans())
def test_tag_ids_to_segmentation_matches_string_converter(rows, scheme, merge):
    """Arbitrary (also malformed) tag id sequences decode like tags_to_segments does on their strings."""
    vocab = tag_vocab(scheme, TYPES, outside="O")
    rows = [[i % len(vocab) for i in r] for r in rows]
    T = max(map(len, rows))
    ids = torch.tensor([r + [-100] * (T - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    seg = tag_ids_to_segmentation(ids, vocab, scheme, TYPES, outside=3, lengths=lengths, merge_outside=merge)
    want = [tags_to_segments([vocab[i] for i in r], scheme, TYPES, outside=3, merge_outside=merge) for r in rows]
    assert seg.segments() == want


@settings(max_examples=60, deadline=None)
@given(st.lists(segmentations(outside=3), min_size=1, max_size=3), st.sampled_from(["BIO", "BIOES", "BMES"]))
def test_segmentation_to_tag_ids_matches_string_converter(segs, scheme):
    vocab = tag_vocab(scheme, TYPES, outside="O")
    seg = sf.Segmentation.from_segments(segs)
    ids = segmentation_to_tag_ids(seg, vocab, scheme, TYPES, outside=3)
    for b, s in enumerate(segs):
        L = s[-1][1]
        assert [vocab[i] for i in ids[b, :L].tolist()] == segments_to_tags(s, scheme, TYPES, outside=3)
        assert (ids[b, L:] == -100).all()
    back = tag_ids_to_segmentation(ids, vocab, scheme, TYPES, outside=3, lengths=seg.lengths)
    assert back.segments() == segs


def test_bmes_bare_prefixes_round_trip():
    vocab = tag_vocab("BMES", [""])
    assert vocab == ["B", "M", "E", "S"]
    segs = [(0, 1, 0), (1, 4, 0), (4, 6, 0)]
    assert segments_to_tags(segs, "BMES", [""]) == ["S", "B", "M", "E", "B", "E"]
    ids = torch.tensor([[vocab.index(t) for t in ["S", "B", "M", "E", "B", "E"]]])
    assert tag_ids_to_segmentation(ids, vocab, "BMES").segments() == [segs]


@pytest.mark.parametrize("scheme", ["BIO", "BIOES", "BMES"])
def test_transition_mask_allows_exactly_the_well_formed_sequences(scheme):
    """Brute force over all tag sequences of length ≤ 4: the grammar allows a sequence iff it is what
    segments_to_tags writes for some segmentation."""
    import itertools

    types = ["A", "B"]
    outside = "O" if scheme != "BMES" else None
    vocab = tag_vocab(scheme, types, outside)
    g = transition_mask(scheme, vocab)
    for n in range(1, 5):
        for seq in itertools.product(range(len(vocab)), repeat=n):
            ok = bool(g["allowed_start"][seq[0]]) and bool(g["allowed_end"][seq[-1]]) and all(
                bool(g["allowed_transitions"][a, b]) for a, b in zip(seq[:-1], seq[1:]))
            tags = [vocab[i] for i in seq]
            segs = tags_to_segments(tags, scheme, types + ["O"], outside=2, merge_outside=False)
            well_formed = segments_to_tags(segs, scheme, types + ["O"], outside=2) == tags
            assert ok == well_formed, (tags, ok)


def test_token_labels_to_segmentation_runs_and_tokens():
    labels = torch.tensor([[2, 2, 0, 1, 1, -100], [1, 1, 1, 1, 1, 1]])
    lengths = torch.tensor([5, 6])
    runs = token_labels_to_segmentation(labels, lengths, num_labels=3)
    assert runs.segments() == [labels_to_segments(labels[0], 5), [(0, 6, 1)]]
    tokens = token_labels_to_segmentation(labels, lengths, num_labels=3, runs=False)
    assert tokens.segments()[0] == explode_segments(runs.segments()[0])


def test_tag_conversion_errors():
    vocab = tag_vocab("BIO", TYPES, outside="O")
    with pytest.raises(TypeError, match="integer"):
        tag_ids_to_segmentation(torch.tensor([[0.5]]), vocab, "BIO", TYPES, outside=3)
    with pytest.raises(ValueError, match=r"sequence 0 has 99 at token 1"):
        tag_ids_to_segmentation(torch.tensor([[0, 99]]), vocab, "BIO", TYPES, outside=3)
    with pytest.raises(ValueError, match="not a BIO tag"):
        transition_mask("BIO", ["O", "E-PER"])
    with pytest.raises(ValueError, match="scheme"):
        transition_mask("IOB2", vocab)
    with pytest.raises(ValueError, match="outside"):
        tag_ids_to_segmentation(torch.tensor([[0]]), vocab, "BIO", TYPES)
    with pytest.raises(ValueError, match="labels must lie in"):
        token_labels_to_segmentation(torch.tensor([[0, 5]]), num_labels=3)


def test_string_converters_refuse_what_they_cannot_mean():
    """Tags outside the scheme (typos, lowercase, another scheme), non-string tags and a bare string
    are refused like the vectorised path refuses them (they became silent segment starts); segments
    that do not tile, float or negative labels, and labels without a name are refused too (a gap gave
    3 tags for 4 tokens, a float label 'B-1.5')."""
    for tags, match in [(["b-PER", "i-PER"], "not a BIO tag"), (["X-PER"], "not a BIO tag"), (["Z"], "not a BIO tag"),
                        (["B-PER", "E-PER"], "not a BIO tag"), (["B-NOPE"], "unknown tag label")]:
        with pytest.raises(ValueError, match=match):
            tags_to_segments(tags, "BIO", NAMES)
    with pytest.raises(TypeError, match="the string"):
        tags_to_segments("B-0", "BIO")
    with pytest.raises(TypeError, match="tag 1 must be a string"):
        tags_to_segments(["B-PER", None], "BIO", NAMES)
    with pytest.raises(ValueError, match=">= 0"):
        tags_to_segments(["B--1"], "BIO")
    assert tags_to_segments(["B-PER", "M-PER", "E-PER"], "BMES", NAMES) == [(0, 3, 1)]
    for segs, err, match in [([(0, 2, 0), (3, 4, 0)], ValueError, "tile"), ([(0, 3, 0), (2, 4, 1)], ValueError, "tile"),
                             ([(3, 1, 0)], ValueError, "tile"), ([(0, 2, 1.5)], TypeError, "must be ints"),
                             ([(0, 2, -1)], ValueError, ">= 0"), ([(0, 2, 7)], ValueError, "has no name")]:
        with pytest.raises(err, match=match):
            segments_to_tags(segs, "BIO", NAMES)


def test_from_segments_refuses_float_labels():
    """collate builds gold with Segmentation.from_segments: a label 1.7 was truncated to 1 there while
    the head refuses the same list."""
    with pytest.raises(TypeError, match="must be ints"):
        sf.Segmentation.from_segments([[(0, 3, 1.7)]])
    with pytest.raises(TypeError, match="must be ints"):
        sf.collate.collate([(torch.randn(3, 4), [(0, 3, 1.7)])])
    assert sf.Segmentation.from_segments([[(0, 3, torch.tensor(1))]]).labels.tolist() == [[1, 1, 1]]


def test_tag_ids_of_the_empty_segmentation_are_padding():
    """A sequence no segmentation fits decodes to the empty Segmentation (labels -1): its tag ids are
    pad, like its labels, not 'I-A I-A'."""
    empty = sf.Segmentation(torch.full((1, 3), -1), torch.zeros(1, 3, dtype=torch.bool), torch.tensor([2]))
    vocab = tag_vocab("BIO", ["A", "B"])
    assert segmentation_to_tag_ids(empty, vocab, "BIO", names=["A", "B"]).tolist() == [[-100, -100, -100]]


def test_small_helpers_refuse_bad_input():
    from semiring_flash.collate import lengths_to_mask, mask_to_lengths

    with pytest.raises(ValueError, match=">= 0"):
        lengths_to_mask(torch.tensor([2, -1]))
    with pytest.raises(ValueError, match="<= T = 2"):
        lengths_to_mask(torch.tensor([3]), T=2)
    with pytest.raises(ValueError, match="T >= 1"):
        mask_to_lengths(torch.zeros(2, 0, dtype=torch.bool))
    with pytest.raises(ValueError, match="tag_lists is empty"):
        sf.tags.tags_to_segmentation([])
    with pytest.raises(TypeError, match="must be ints"):
        labels_to_segments([0, 1.5])
    with pytest.raises(ValueError, match="length must be"):
        labels_to_segments([0, 1], length=-1)
    assert labels_to_segments(torch.tensor([0, 0, 1, 1, 2]), length=4) == [(0, 2, 0), (2, 4, 1)]
    assert lengths_to_mask(torch.tensor([2, 0])).tolist() == [[True, True], [False, False]]


def test_from_segments_refuses_a_T_shorter_than_the_segments():
    with pytest.raises(ValueError, match="T = 3 is shorter"):
        sf.Segmentation.from_segments([[(0, 2, 1), (2, 5, 0)]], T=3)
    with pytest.raises(ValueError, match="segments is empty"):
        sf.Segmentation.from_segments([])
    seg = sf.Segmentation.from_segments([[(0, 2, 1)]], T=4)
    assert seg.labels.tolist() == [[1, 1, -1, -1]] and seg.lengths.tolist() == [2]
    bad = sf.Segmentation(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[True, False, False]]), torch.tensor([5]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        bad.check(2)


def test_segmentation_labels_of_any_integer_dtype_bools_refused():
    p = sf.SegmentPotentials(torch.randn(1, 3, 2), transition=torch.zeros(2, 2), duration=torch.zeros(2, 2))
    starts = torch.tensor([[True, False, True]])
    want = sf.SemiMarkovCRF(p).log_prob(sf.Segmentation(torch.tensor([[0, 0, 1]]), starts, 3))
    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        seg = sf.Segmentation(torch.tensor([[0, 0, 1]], dtype=dtype), starts, 3)
        assert seg.labels.dtype == torch.long and torch.equal(sf.SemiMarkovCRF(p).log_prob(seg), want)
    with pytest.raises(TypeError, match="integer tensor"):
        sf.Segmentation(torch.tensor([[True, True, False]]), starts, 3)
