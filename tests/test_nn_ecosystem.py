"""The head with pytorch-crf habits: masks, per-token tags, token decoding, padding/collate, saved grammar,
autocast, K = 1 agreement with pytorch-crf (the oracle), and clear errors for bad input."""

from __future__ import annotations

import io

import pytest
import torch

from semiring_flash.collate import collate, lengths_to_mask, mask_to_lengths, pad_batch, pad_tags
from semiring_flash.nn import SemiCRFHead
from semiring_flash.tags import explode_segments, labels_to_segments



def _random_head(C, K, seed=0, in_features=None, **kw):
    torch.manual_seed(seed)
    head = SemiCRFHead(in_features, C, K, backend="torch", **kw)
    with torch.no_grad():
        for p in (head.transition, head.start, head.end):
            p.normal_()
        if hasattr(head.durations, "table"):
            head.durations.table.normal_()
    return head


def _batch(B=4, T=7, C=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, T, C, generator=g)
    lengths = torch.tensor([T, 1, T - 2, 3][:B])
    tags = torch.randint(0, C, (B, T), generator=g)
    tags = torch.where(torch.arange(T) < lengths.unsqueeze(1), tags, -100)
    return scores, lengths, tags


def _as_pytorch_crf(head):
    """pytorch-crf with the head's K = 1 model: emissions get duration[0] (every token is a segment)."""
    torchcrf = pytest.importorskip("torchcrf")  # the test extra installs it; only this oracle needs it
    crf = torchcrf.CRF(head.num_labels, batch_first=True)
    with torch.no_grad():
        crf.transitions.copy_(head.transition)
        crf.start_transitions.copy_(head.start)
        crf.end_transitions.copy_(head.end)
    return crf, head.durations()[0].detach()


def test_k1_head_matches_pytorch_crf():
    C = 4
    head = _random_head(C, 1)
    scores, lengths, tags = _batch(C=C)
    mask = lengths_to_mask(lengths, scores.shape[1])
    crf, dur1 = _as_pytorch_crf(head)
    ref_ll = crf(scores + dur1, tags.clamp(min=0), mask, reduction="none")
    nll = head.loss(scores, gold=tags, mask=mask, reduction="none")
    torch.testing.assert_close(-nll, ref_ll, rtol=1e-5, atol=1e-5)
    assert head.decode(scores, mask=mask, output="labels") == crf.decode(scores + dur1, mask)
    # gradients of the NLL w.r.t. the scores agree too
    x = scores.clone().requires_grad_()
    head.loss(x, gold=tags, mask=mask, reduction="sum").backward()
    y = scores.clone().requires_grad_()
    (-crf(y + dur1, tags.clamp(min=0), mask, reduction="sum")).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)


def test_mask_equals_lengths_and_bad_masks_are_refused():
    head = _random_head(3, 3)
    scores, lengths, tags = _batch()
    mask = lengths_to_mask(lengths, scores.shape[1])
    torch.testing.assert_close(head.loss(scores, gold=tags, mask=mask, reduction="none"),
                               head.loss(scores, lengths, tags, reduction="none"))
    assert head.decode(scores, mask=mask) == head.decode(scores, lengths)
    holes = mask.clone()
    holes[0, 2] = False
    with pytest.raises(ValueError, match="left-aligned prefix.*sequence 0"):
        head(scores, mask=holes)
    late = mask.clone()
    late[2, 0] = False
    with pytest.raises(ValueError, match=r"mask\[:, 0\].*sequence 2"):
        head(scores, mask=late)
    with pytest.raises(TypeError, match="bool"):
        head(scores, mask=mask.long())
    with pytest.raises(ValueError, match="shape"):
        head(scores, mask=mask[:, :-1])
    with pytest.raises(ValueError, match="not both"):
        head(scores, lengths, mask=mask)
    with pytest.raises(TypeError, match="mask="):
        head(scores, mask)


def test_per_token_tags_as_gold():
    scores, lengths, tags = _batch()
    # K = 1: every token is a segment
    head1 = _random_head(3, 1)
    segs = [explode_segments(labels_to_segments(tags[b], int(lengths[b]))) for b in range(4)]
    torch.testing.assert_close(head1.loss(scores, lengths, tags, reduction="none"),
                               head1.loss(scores, lengths, segs, reduction="none"))
    # K > 1: maximal runs of one label are segments
    head3 = _random_head(3, 7)
    runs = [labels_to_segments(tags[b], int(lengths[b])) for b in range(4)]
    torch.testing.assert_close(head3.loss(scores, lengths, tags, reduction="none"),
                               head3.loss(scores, lengths, runs, reduction="none"))
    # the reading follows the user's durations, not the internal states (first_token pieces are 1 token)
    first = _random_head(3, 2, first_token=True)  # internally every state is 1 token long
    short = torch.tensor([[0, 0, 1, 1, 2, 0, 0], [1, -100, -100, -100, -100, -100, -100],
                          [2, 2, 0, 1, 1, -100, -100], [0, 1, 1, -100, -100, -100, -100]])
    short_runs = [labels_to_segments(short[b], int(lengths[b])) for b in range(4)]
    both = torch.cat([scores, scores.flip(-1)], -1)
    torch.testing.assert_close(first.loss(both, lengths, short, reduction="none"),
                               first.loss(both, lengths, short_runs, reduction="none"))
    with pytest.raises(TypeError, match="features must be a floating-point tensor"):
        head3.loss(scores.tolist(), lengths, tags)


def test_decode_labels_are_the_segments_per_token():
    head = _random_head(3, 3)
    scores, lengths, _ = _batch()
    segs = head.decode(scores, lengths)
    labels = head.decode(scores, lengths, output="labels")
    assert [len(r) for r in labels] == lengths.tolist()
    assert labels == [[c for s, e, c in row for _ in range(s, e)] for row in segs]
    with pytest.raises(ValueError, match="output"):
        head.decode(scores, lengths, output="tags")


def test_state_dict_carries_the_grammar():
    C = 3
    grammar = ~torch.eye(C, dtype=torch.bool)
    start = torch.tensor([True, False, True])
    head = _random_head(C, 3, allowed_transitions=grammar, allowed_start=start)
    scores, lengths, _ = _batch()
    gold = [[(0, 2, 0), (2, 5, 1), (5, 7, 2)], [(0, 1, 2)], [(0, 1, 0), (1, 4, 1), (4, 5, 0)], [(0, 3, 2)]]
    twin = SemiCRFHead(None, C, 3, backend="torch", allowed_transitions=grammar, allowed_start=start)
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    twin.load_state_dict(torch.load(buffer, weights_only=True))  # the saved structure is plain data
    torch.testing.assert_close(twin.loss(scores, lengths, gold), head.loss(scores, lengths, gold))
    sd = head.state_dict()
    assert all(k in sd for k in ("allowed_transitions", "allowed_start", "allowed_end", "_extra_state"))
    with pytest.raises(RuntimeError, match="allowed_transitions.*another grammar"):
        SemiCRFHead(None, C, 3, allowed_start=start).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="allowed_start"):
        SemiCRFHead(None, C, 3, allowed_transitions=grammar).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="max_duration"):
        SemiCRFHead(None, C, 4, allowed_transitions=grammar, allowed_start=start).load_state_dict(sd, strict=False)
    # a parametric family's duration_normalize changes the distribution: part of the structure (a table ignores it)
    SemiCRFHead(None, C, 3, allowed_transitions=grammar, allowed_start=start, duration_normalize=False).load_state_dict(sd)
    negbin = SemiCRFHead(None, C, 3, duration="negbin").state_dict()
    with pytest.raises(RuntimeError, match="duration_normalize"):
        SemiCRFHead(None, C, 3, duration="negbin", duration_normalize=False).load_state_dict(negbin)
    predates = {**negbin, "_extra_state": {"config": {k: v for k, v in negbin["_extra_state"]["config"].items()
                                                      if k != "duration_normalize"}}}
    SemiCRFHead(None, C, 3, duration="negbin", duration_normalize=False).load_state_dict(predates)  # an older checkpoint loads
    old = {k: v for k, v in sd.items() if k not in ("allowed_transitions", "_extra_state")}
    with pytest.raises(RuntimeError, match="Missing key"):  # a checkpoint without its grammar fails loudly too
        twin.load_state_dict(old)


def test_no_segmentation_fits_raises_naming_the_sequence():
    head = _random_head(2, 4, min_duration=3)
    scores = torch.randn(3, 6, 2)
    lengths = torch.tensor([6, 2, 3])
    with pytest.raises(ValueError, match=r"sequence 1 \(length 2\) has no segmentation"):
        head.loss(scores, lengths, [[(0, 6, 0)], [(0, 2, 1)], [(0, 3, 0)]])


def test_autocast_features_compute_the_crf_in_fp32():
    head = _random_head(3, 3, in_features=5, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 5, generator=g)
    lengths = torch.tensor([6, 4])
    gold = [[(0, 2, 0), (2, 5, 1), (5, 6, 1)], [(0, 3, 2), (3, 4, 0)]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head.proj(x)
        assert low.dtype == torch.bfloat16
        loss = head.loss(x, lengths, gold)
        segs = head.decode(x, lengths)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref_head = SemiCRFHead(None, 3, 3, backend="torch")
    ref_head.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith(("proj.", "_extra"))}, strict=False)
    # the same numbers as the fp32 CRF on the bf16 scores
    torch.testing.assert_close(loss, ref_head.loss(low.float(), lengths, gold))
    assert segs == ref_head.decode(low.float(), lengths)
    loss.backward()
    assert torch.isfinite(head.proj.weight.grad).all()


def test_bad_gold_labels_and_window_labels():
    head = _random_head(3, 3)
    scores, lengths, tags = _batch()
    with pytest.raises(TypeError, match="ints"):
        head.loss(scores, lengths, [[(0, 7, 1.5)], [(0, 1, 0)], [(0, 5, 0)], [(0, 3, 0)]])
    with pytest.raises(TypeError, match="integer"):
        head.loss(scores, lengths, tags.float())
    starts = torch.ones_like(tags, dtype=torch.bool)
    with pytest.raises(TypeError, match="integer"):
        head.loss(scores, lengths, (tags.float(), starts))
    # uint8 labels are fine (padding is ignored) and give the same loss as int64
    padded = torch.where(tags < 0, 255, tags).to(torch.uint8)
    torch.testing.assert_close(head.loss(scores, lengths, padded), head.loss(scores, lengths, tags))
    bad = tags.clone()
    bad[2, 1] = 3
    with pytest.raises(ValueError, match=r"\[0, 3\); sequence 2 has 3 at token 1"):
        head.loss(scores, lengths, bad)
    with pytest.raises(ValueError, match=r"sequence 1 has -100 at token 1 \(padding\? pass lengths or a mask\)"):
        head.loss(scores, None, tags)
    with pytest.raises(ValueError, match="sequence 0 has 7"):
        head.loss(scores, lengths, [[(0, 7, 7)], [(0, 1, 0)], [(0, 5, 0)], [(0, 3, 0)]])
    gold = head.decode(scores, lengths)
    with pytest.raises(TypeError, match="prev_labels must be an integer"):
        head.loss(scores, lengths, gold, prev_labels=torch.zeros(4))
    with pytest.raises(ValueError, match=r"next_labels must lie in \[-1, 3\).*sequence 1 has 3"):
        head.loss(scores, lengths, gold, next_labels=torch.tensor([0, 3, -1, 1]))
    with pytest.raises(ValueError, match=r"prev_labels must have shape \(B,\)"):
        head.loss(scores, lengths, gold, prev_labels=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="needs gold"):
        head.loss(scores, lengths)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(max_duration=3.0), TypeError, "max_duration must be an int"),
    (dict(max_duration=[2, 2.5]), TypeError, "max_duration entries"),
    (dict(max_duration=0), ValueError, "max_duration must be >= 1"),
    (dict(num_labels=0), ValueError, "num_labels must be >= 1"),
    (dict(num_labels=2.0), TypeError, "num_labels must be an int"),
    (dict(min_duration=1.5), TypeError, "min_duration"),
    (dict(in_features=0), ValueError, "in_features"),
])
def test_bad_constructor_arguments(kwargs, err, match):
    args = dict(in_features=None, num_labels=2, max_duration=3) | kwargs
    with pytest.raises(err, match=match):
        SemiCRFHead(args.pop("in_features"), args.pop("num_labels"), args.pop("max_duration"), **args)


def test_padding_and_collate_match_per_sequence_losses():
    head = _random_head(3, 3, in_features=4)
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(n, 4, generator=g) for n in (5, 2, 7)]
    tags = [torch.randint(0, 3, (n,), generator=g) for n in (5, 2, 7)]
    x, lengths = pad_batch(feats)
    assert x.shape == (3, 7, 4) and lengths.tolist() == [5, 2, 7]
    assert pad_tags(tags)[1, 2:].eq(-100).all()
    batch = collate(list(zip(feats, tags)))
    assert torch.equal(batch["mask"], lengths_to_mask(lengths)) and torch.equal(mask_to_lengths(batch["mask"]), lengths)
    nll = head.loss(batch["features"], batch["lengths"], batch["gold"], reduction="none")
    one_by_one = torch.stack([head.loss(f[None], None, t[None]) for f, t in zip(feats, tags)])
    torch.testing.assert_close(nll, one_by_one, rtol=1e-5, atol=1e-5)
    seg_batch = collate([(f, labels_to_segments(t)) for f, t in zip(feats, tags)])
    torch.testing.assert_close(head.loss(seg_batch["features"], seg_batch["lengths"], seg_batch["gold"], reduction="none"), nll)
    with pytest.raises(ValueError, match="no tokens"):
        pad_batch([torch.zeros(0, 4)])
    with pytest.raises(TypeError, match="integer"):
        pad_tags([torch.zeros(3)])
    with pytest.raises(ValueError, match="item 1"):
        collate([(feats[0], tags[0]), (feats[1], tags[0])])
