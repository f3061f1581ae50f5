"""Chunk-level scoring against an independent conlleval-style oracle (in place of seqeval).

seqeval would be the natural oracle, but PyPI has it only as an sdist: installing
it builds it and runs its setup.py, which this project does not do. So the
rules it (and conlleval) uses to read chunks off IOB/IOBES tags are written
here from their description, independently of ``semiring_flash.tags``:

- a chunk ends before a tag when the previous tag was E or S, or was B/I and
  this tag is B, S or O, or the chunk type changes;
- a chunk starts at B or S, at I/E after O, E or S, and at any tag whose type
  differs from the previous one's.

Then (1) ``tags.tags_to_segments`` must read the same chunks, malformed tag
sequences included, and (2) the span F1 of the CWS example must equal micro
chunk F1 over BIOES tags (what seqeval reports as micro avg).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from semiring_flash.tags import segments_to_tags, tags_to_segments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "examples"))


def _split(tag):
    return ("O", "") if tag == "O" else tuple(tag.split("-", 1))


def oracle_chunks(tags) -> set:
    """{(start, end_exclusive, type)} read the conlleval way."""
    chunks, start, prev, prev_type = set(), None, "O", ""
    for t, tag in enumerate(list(tags) + ["O"]):
        kind, typ = _split(tag)
        ends = prev in ("E", "S") or (prev in ("B", "I") and kind in ("B", "S", "O")) or (
            prev != "O" and typ != prev_type)
        starts = kind in ("B", "S") or (prev in ("E", "S", "O") and kind in ("I", "E")) or (
            kind != "O" and typ != prev_type)
        if ends and start is not None:
            chunks.add((start, t, prev_type))
            start = None
        if starts:
            start = t
        prev, prev_type = kind, typ
    return chunks


def oracle_f1(gold_tags, pred_tags) -> dict:
    tp = n_gold = n_pred = 0
    for g, p in zip(gold_tags, pred_tags):
        gc, pc = oracle_chunks(g), oracle_chunks(p)
        tp, n_gold, n_pred = tp + len(gc & pc), n_gold + len(gc), n_pred + len(pc)
    pr, rc = (tp / n_pred if n_pred else 0.0), (tp / n_gold if n_gold else 0.0)
    return {"precision": pr, "recall": rc, "f1": 2 * pr * rc / (pr + rc) if pr + rc else 0.0}


def test_oracle_reads_known_cases():
    assert oracle_chunks(["B-a", "I-a", "O", "S-b"]) == {(0, 2, "a"), (3, 4, "b")}
    assert oracle_chunks(["I-a", "I-a", "B-a", "E-a"]) == {(0, 2, "a"), (2, 4, "a")}  # I after O starts
    assert oracle_chunks(["B-a", "I-b", "E-b", "I-b"]) == {(0, 1, "a"), (1, 3, "b"), (3, 4, "b")}
    assert oracle_chunks(["O", "O"]) == set()


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_tags_to_segments_reads_conlleval_chunks(scheme):
    rng = random.Random(0)
    prefixes = "BI" if scheme == "BIO" else "BIES"
    vocab = ["O"] + [f"{p}-{x}" for p in prefixes for x in "ab"]
    for _ in range(400):
        tags = [rng.choice(vocab) for _ in range(rng.randint(1, 10))]  # mostly malformed
        segs = tags_to_segments(tags, scheme, names=["a", "b", "out"], outside=2)
        assert {(s, e, "ab"[c]) for s, e, c in segs if c != 2} == oracle_chunks(tags), tags


def _random_tiling(rng, T, C):
    segs, s = [], 0
    while s < T:
        e = min(T, s + rng.randint(1, 4))
        segs.append((s, e, rng.randrange(C)))
        s = e
    return segs


def test_cws_span_f1_equals_micro_chunk_f1():
    cws = pytest.importorskip("cws")
    rng = random.Random(1)
    names = [f"p{c}" for c in range(3)]
    gold = [_random_tiling(rng, rng.randint(1, 12), 3) for _ in range(60)]
    pred = [g if rng.random() < 0.3 else _random_tiling(rng, g[-1][1], 3) for g in gold]
    ours = cws.evaluate(gold, pred)
    with_pos = oracle_f1([segments_to_tags(g, "BIOES", names) for g in gold],
                         [segments_to_tags(p, "BIOES", names) for p in pred])
    words = oracle_f1([segments_to_tags([(s, e, 0) for s, e, _ in g], "BIOES", ["w"]) for g in gold],
                      [segments_to_tags([(s, e, 0) for s, e, _ in p], "BIOES", ["w"]) for p in pred])
    for key in ("precision", "recall", "f1"):
        assert ours["words+pos"][key] == pytest.approx(with_pos[key], abs=1e-12)
        assert ours["words"][key] == pytest.approx(words[key], abs=1e-12)
    assert 0.2 < with_pos["f1"] < 0.9  # neither trivial nor perfect
