"""Smoke tests of the examples' plumbing on the committed fixture (no downloads, a few seconds)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "docs" / "examples"))

import gene_structure as gs  # noqa: E402

import semiring_flash as sf  # noqa: E402
from semiring_flash.data import parse_genbank  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "augustus_genes_slice.gb"


@pytest.fixture(scope="module")
def loci():
    return [gs.Locus(r) for r in parse_genbank(FIXTURE)]


def test_windows_tile_loci_at_segment_boundaries(loci):
    wins = gs.make_windows(loci, 500, random.Random(0))
    for li, loc in enumerate(loci):
        mine = sorted((i, j) for l2, i, j in wins if l2 == li)
        assert mine[0][0] == 0 and mine[-1][1] == len(loc.segments)
        assert all(a[1] == b[0] for a, b in zip(mine, mine[1:]))


def test_features_and_window_batch_alignment(loci):
    feat = gs.GeneFeatures().fit(loci)
    for loc in loci:
        loc.feats = feat.transform(loc)
        assert loc.feats.shape == (len(loc), feat.channels) and torch.isfinite(loc.feats).all()
    # the donor PWM of the + strand fires where + introns start (the fixture's own statistics)
    don = torch.stack([loc.feats[s, 12] for loc in loci for s, e, c in loc.segments if c == gs.INP])
    assert don.mean() > 1.0
    c = loci[0].codes
    assert torch.equal(gs.revcomp_codes(gs.revcomp_codes(c)), c)
    wins = gs.make_windows(loci, 700, random.Random(0))[:6]
    F = 10
    codes, xfeat, lengths, gold, prev, nxt = gs.window_batch(loci, wins, F)
    for r, (li, i, j) in enumerate(wins):
        loc = loci[li]
        a = loc.segments[i][0]
        L = int(lengths[r])
        assert torch.equal(codes[r, F:F + L], loc.codes[a:a + L])
        assert torch.equal(xfeat[r, F:F + L], loc.feats[a:a + L])
        assert gold[r][-1][1] == L and gold[r][0][0] == 0
        assert int(prev[r]) == (loc.segments[i - 1][2] if i else -1)
        assert int(nxt[r]) == (loc.segments[j][2] if j < len(loc.segments) else -1)


def test_perfect_prediction_scores_one(loci):
    m = gs.evaluate(loci, [l.segments for l in loci])
    for level in ("exon", "gene", "coding_base"):
        assert m[level]["f1"] == 1.0
    m = gs.evaluate(loci, [[(0, len(l), 0)] for l in loci])
    assert m["exon"]["recall"] == 0 and m["gene"]["pred"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["joint"])
def test_gene_training_step_and_decoding(loci, mode):
    torch.manual_seed(0)
    feat = gs.GeneFeatures().fit(loci)
    for loc in loci:
        loc.feats = feat.transform(loc)
    enc = gs.DNAEncoder(16, feat.channels, dilations=(1, 2))
    heads = {k: gs.make_head(k, 16, 48, "negbin") for k in ("semicrf", "linear")}
    model = gs.GeneModel(enc, heads, flank=enc.receptive_field // 2 + 1)

    class Args:
        steps, lr, head_lr_mult, window, max_window, max_tokens, batch, eval_tokens = 2, 1e-3, 10, 600, 10**9, 20_000, 8, 50_000

    out = gs.train(model, loci, Args, "cpu", 0)
    assert set(out["final_nll_per_bp"]) == {"semicrf", "linear"}
    assert all(v > 0 and v == v for v in out["final_nll_per_bp"].values())
    for kind in heads:
        preds, _ = gs.predict(model, loci[:3], Args, kind, "cpu")
        for loc, p in zip(loci, preds):
            assert p[0][0] == 0 and p[-1][1] == len(loc) and p[0][2] == 0 and p[-1][2] == 0
            allowed = gs.gene_transition_mask()
            assert all(allowed[a[2], b[2]] for a, b in zip(p, p[1:]))


def test_cws_bies_round_trip():
    import cws

    segs = [(0, 2, 0), (2, 3, 10), (3, 7, 1), (7, 8, 0)]
    gold = cws.gold_for("linear", segs)
    assert [e - s for s, e, _ in gold] == [1] * 8
    assert cws.decode_for("linear", gold) == segs
    allowed, start, end = cws.bies_grammar()
    tags = [c for _, _, c in gold]
    assert start[tags[0]] and end[tags[-1]] and all(allowed[a, b] for a, b in zip(tags, tags[1:]))
    # the example's hand-written grammar is the library's BIOES grammar over its tag vocabulary
    grammar = sf.tags.transition_mask("BIOES", cws.BIES)
    assert torch.equal(allowed, grammar["allowed_transitions"])
    assert torch.equal(start, grammar["allowed_start"]) and torch.equal(end, grammar["allowed_end"])
