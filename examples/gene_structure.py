"""Gene-structure annotation on real Drosophila loci: semi-Markov CRF head vs a linear-chain CRF.

Data: the AUGUSTUS tutorial gene set (Debian's ``augustus-doc``; 486 training
and 100 test loci of D. melanogaster, one annotated coding gene each),
downloaded and unpacked at run time (``semiring_flash.data``). Every base is
labelled intergenic / exon+ / intron+ / exon− / intron− (coding exons; UTRs
count as intergenic).

Input: one-hot DNA plus 20 count-based evidence channels fit on the training
loci (``GeneFeatures``: 5th-order Markov coding potential per strand and
frame, splice-site / start / stop position weight matrices). Encoder: a
convolution over them (deeper dilated residual CNNs with ``--dilations``).
Two heads on the same encoder (``--train joint``: one encoder, the sum of both
NLLs; ``--train separate``: one encoder each, same initialisation and steps):

- **semi-CRF**: ``SemiCRFHead`` with segments of 1..K bases, negative-binomial
  duration models per label, minimum intron and exon lengths, the gene grammar
  (intergenic → exon → (intron → exon)* → intergenic, per strand) as −inf
  transitions, ``long_segments`` (regions longer than K are exact chains) and
  a first-base score channel (``first_token``);
- **linear-chain CRF** (the baseline): the same head with ``max_duration=2``,
  ``first_token`` and ``long_segments``, in which every internal piece is one
  base: a K = 1 linear chain over B/I/E/S-like states (geometric durations).

Training uses windows of whole gold segments (~``--window`` bases) with the
labels of the segments around them (``prev_labels``/``next_labels``): the exact
conditional likelihood of a window given its neighbours. Evaluation decodes
whole test loci (Viterbi) and scores coding exons (exact start, end and
strand) and whole genes (every exon exact) — precision / recall / F1 — plus
coding-base F1. A plot shows the posterior label marginals and the decoded
segments along one test locus.

    python examples/gene_structure.py            # default: a 4–5 min CPU run (test loci ≤ 8 kb, 100 steps)
    python examples/gene_structure.py --full --device cuda   # all loci, 400 steps (≈ 9 min on one H200)

See docs/gene_demo.md for the results.

Outputs go to ``--out`` (default ``runs/gene_structure``): results.json,
results.md, posteriors.png.
"""

from __future__ import annotations

import argparse
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiring_flash.data import (
    GENE_LABELS,
    DataUnavailable,
    encode_dna,
    gene_segments,
    gene_transition_mask,
    load_augustus_genes,
    segments_to_genes,
)
from semiring_flash.nn import SemiCRFHead

IG, EXP, INP, EXM, INM = range(5)


# ------------------------------------------------------------------------------------------------
# model
class DNAEncoder(nn.Module):
    """Dilated residual CNN over DNA: base codes (B, T) in 0..4 and feature channels (B, T, X) -> (B, T, H).

    Input at each base: its one-hot code (N -> zeros) and the count-based
    evidence channels of :class:`GeneFeatures`, through one convolution; then
    pre-activation residual blocks (per-base LayerNorm, GELU, dilated
    convolution). The norm is per base, not BatchNorm: windows in training and
    whole loci in evaluation then see exactly the same function.
    """

    def __init__(self, hidden=64, extra_channels=0, kernel=9, dilations=(1, 2, 4, 8, 16, 1)):
        super().__init__()
        self.inp = nn.Conv1d(4 + extra_channels, hidden, kernel, padding=kernel // 2)
        self.blocks = nn.ModuleList(
            nn.Sequential(ChannelNorm(hidden), nn.GELU(),
                          nn.Conv1d(hidden, hidden, kernel, padding=d * (kernel // 2), dilation=d))
            for d in dilations)
        self.out_features = hidden
        self.receptive_field = 1 + (kernel - 1) * (1 + sum(dilations))

    def forward(self, codes, feats=None):
        x = nn.functional.one_hot(codes, 5)[..., :4].float()
        if feats is not None:
            x = torch.cat([x, feats], -1)
        h = self.inp(x.transpose(1, 2))
        for block in self.blocks:
            h = h + block(h)
        return nn.functional.gelu(h).transpose(1, 2)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, T) activations, per base."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class GeneModel(nn.Module):
    """An encoder and one or more heads on its features (``--train joint`` trains several on one encoder)."""

    def __init__(self, encoder: DNAEncoder, heads: dict, flank: int):
        super().__init__()
        self.encoder, self.heads, self.flank = encoder, nn.ModuleDict(heads), flank

    def features(self, codes, feats=None):  # inputs include `flank` bases of context on both sides
        h = self.encoder(codes, feats)
        return h[:, self.flank:h.shape[1] - self.flank]


def make_head(kind: str, H: int, K: int, duration: str, first_token: bool = True) -> SemiCRFHead:
    """The two heads. Both give the first base of every segment its own score channel
    (``first_token``), so splice sites, start and stop codons can be scored at the exact base."""
    grammar = gene_transition_mask()
    only_ig = torch.tensor([True, False, False, False, False])
    if kind == "semicrf":
        # introns shorter than 40 bp do not occur in Drosophila (the training set's shortest is 48)
        return SemiCRFHead(H, 5, K, duration=duration, min_duration=[1, 3, 40, 3, 40], long_segments=True,
                           first_token=first_token, allowed_transitions=grammar, allowed_start=only_ig,
                           allowed_end=only_ig, duration_init_mean=[300.0, 150.0, 60.0, 150.0, 60.0])
    # linear-chain CRF: with max_duration=2, first_token and long_segments every internal piece is one base
    # (states first / inside / last per label = B/I/E/S tags), i.e. K = 1 internally, geometric durations
    return SemiCRFHead(H, 5, 2, duration="table", long_segments=True, first_token=first_token,
                       allowed_transitions=grammar, allowed_start=only_ig, allowed_end=only_ig)


# ------------------------------------------------------------------------------------------------
# data
class Locus:
    def __init__(self, rec):
        self.name = rec.name
        self.codes = encode_dna(rec.seq)
        self.segments = gene_segments(rec)
        self.genes = segments_to_genes(self.segments)
        self.cds = rec.cds
        self.feats = None  # (n, channels) from GeneFeatures.transform

    def __len__(self):
        return len(self.codes)


def revcomp_codes(codes):
    rc = torch.tensor([3, 2, 1, 0, 4])
    return rc[codes.flip(0)]


def make_windows(loci, window: int, rng: random.Random):
    """Tile every locus into windows of whole gold segments (≈ ``window`` bases), random phase."""
    out = []
    for li, loc in enumerate(loci):
        segs, i = loc.segments, 0
        target = rng.uniform(0.3, 1.0) * window
        while i < len(segs):
            j, L = i, 0
            while j < len(segs) and L < target:
                L += segs[j][1] - segs[j][0]
                j += 1
            out.append((li, i, j))
            i, target = j, window
    return out


def window_batch(loci, wins, flank: int):
    """Codes (B, T+2F) and features (B, T+2F, X) with flanks, lengths, user gold segments, prev/next labels."""
    items = []
    for li, i, j in wins:
        loc = loci[li]
        segs = loc.segments
        a, b = segs[i][0], segs[j - 1][1]
        items.append((loc, a, b, [(s - a, e - a, c) for s, e, c in segs[i:j]],
                      segs[i - 1][2] if i > 0 else -1, segs[j][2] if j < len(segs) else -1))
    T = max(b - a for _, a, b, *_ in items)
    codes, feats = padded_inputs([(loc, a, b) for loc, a, b, *_ in items], T, flank)
    return (codes, feats, torch.tensor([b - a for _, a, b, *_ in items]), [it[3] for it in items],
            torch.tensor([it[4] for it in items]), torch.tensor([it[5] for it in items]))


def padded_inputs(spans, T: int, flank: int):
    """Stack loci[a - flank : b + flank] (codes 4 = N and zero features outside the locus) to length T + 2·flank."""
    X = spans[0][0].feats.shape[1] if spans[0][0].feats is not None else 0
    codes = torch.full((len(spans), T + 2 * flank), 4, dtype=torch.long)
    feats = torch.zeros(len(spans), T + 2 * flank, X)
    for r, (loc, a, b) in enumerate(spans):
        lo, hi = max(0, a - flank), min(len(loc), b + flank)
        off = lo - (a - flank)
        codes[r, off:off + hi - lo] = loc.codes[lo:hi]
        if X:
            feats[r, off:off + hi - lo] = loc.feats[lo:hi]
    return codes, (feats if X else None)


def batches_by_length(items, lengths, max_tokens: int, max_batch: int):
    """Group indices sorted by length so that batch size × longest ≤ max_tokens."""
    order = sorted(range(len(items)), key=lambda k: lengths[k])
    out, cur = [], []
    for k in order:
        if cur and ((len(cur) + 1) * lengths[k] > max_tokens or len(cur) >= max_batch):
            out.append(cur)
            cur = []
        cur.append(k)
    if cur:
        out.append(cur)
    return out


# ------------------------------------------------------------------------------------------------
# count-based sequence features (fit on the training loci only)
class GeneFeatures:
    """Classic gene-finding evidence as input channels for the encoder, fit by counting on training loci.

    - coding potential: a 5th-order Markov chain per codon position (coding bases)
      against one for non-coding bases; per base, strand and frame the log-odds,
      summed over windows of ``w`` bases to the left and right (2 strands × 3
      frames × 2 sides = 12 channels);
    - splice donor / acceptor, start and stop codon position weight matrices
      (log-odds against uniform), scored as if a segment started at this base
      (4 signals × 2 strands = 8 channels).

    Channels are standardised with the training loci's mean and std. These are
    the features of feature-based (semi-)CRF gene finders; the CNN on top and the
    heads are what is learned by gradient descent.
    """

    ORDER = 5
    SIGNALS = {"donor": (-3, 6), "acceptor": (-20, 3), "start": (-6, 6), "stop": (-3, 6)}  # offsets around the boundary

    def __init__(self, window: int = 48):
        self.w = window

    # strand-normalised views ------------------------------------------------------------
    @staticmethod
    def _normalised(loc):
        """(codes, exons) with the gene on the + strand (reverse complement for − genes)."""
        (c,) = loc.cds
        if c.strand == "+":
            return loc.codes, c.exons
        n = len(loc)
        return revcomp_codes(loc.codes), sorted((n - b, n - a) for a, b in c.exons)

    def _contexts(self, z):
        """(n,) context index of the ORDER bases before each base, and validity."""
        k, n = self.ORDER, z.shape[0]
        pad = torch.cat([torch.full((k,), 4, dtype=z.dtype), z])
        win = pad.unfold(0, k + 1, 1)[:n]  # (n, k+1): k context bases + the base
        ok = (win != 4).all(-1)
        ctx = (win[:, :k].clamp(max=3) * (4 ** torch.arange(k - 1, -1, -1))).sum(-1)
        return ctx, z.clamp(max=3), ok

    def fit(self, loci):
        k = self.ORDER
        cod = torch.ones(3, 4 ** k, 4)
        nc = torch.ones(4 ** k, 4)
        sig = {s: torch.ones(hi - lo, 4) for s, (lo, hi) in self.SIGNALS.items()}
        for loc in loci:
            z, exons = self._normalised(loc)
            ctx, base, ok = self._contexts(z)
            coding = torch.zeros(len(z), dtype=torch.bool)
            phase = torch.zeros(len(z), dtype=torch.long)
            pos = 0
            for a, b in exons:
                coding[a:b] = True
                phase[a:b] = (pos + torch.arange(b - a)) % 3
                pos += b - a
            m = ok & coding
            cod.index_put_((phase[m], ctx[m], base[m]), torch.ones(int(m.sum())), accumulate=True)
            m = ok & ~coding
            nc.index_put_((ctx[m], base[m]), torch.ones(int(m.sum())), accumulate=True)
            bounds = {"donor": [b for _, b in exons[:-1]], "acceptor": [a for a, _ in exons[1:]],
                      "start": [exons[0][0]], "stop": [exons[-1][1]]}
            for s, (lo, hi) in self.SIGNALS.items():
                for t in bounds[s]:
                    if t + lo >= 0 and t + hi <= len(z):
                        w = z[t + lo:t + hi]
                        keep = w != 4
                        sig[s].index_put_((torch.arange(hi - lo)[keep], w[keep]), torch.ones(int(keep.sum())), accumulate=True)
        self.cod = (cod / cod.sum(-1, keepdim=True)).log()
        self.nc = (nc / nc.sum(-1, keepdim=True)).log()
        self.pwm = {s: (m / m.sum(-1, keepdim=True)).log() - math.log(0.25) for s, m in sig.items()}
        raw = torch.cat([self._raw(loc) for loc in loci[:200]])
        self.mean, self.std = raw.mean(0), raw.std(0).clamp(min=1e-3)
        return self

    # per-locus features ------------------------------------------------------------------
    def _one_strand(self, z):
        """Token features (n, 6) and boundary features (n + 1, 4) of a sequence read on its + strand."""
        n, w = len(z), self.w
        ctx, base, ok = self._contexts(z)
        t = torch.arange(n)
        llr = torch.stack([self.cod[(t - f) % 3, ctx, base] - self.nc[ctx, base] for f in range(3)], 1)
        llr = torch.where(ok.unsqueeze(1), llr, torch.zeros(()))
        cum = torch.cat([torch.zeros(1, 3), llr.cumsum(0)])  # (n + 1, 3)
        left = (cum[t + 1] - cum[(t + 1 - w).clamp(min=0)]) / w  # bases t-w+1 .. t
        right = (cum[(t + w).clamp(max=n)] - cum[t]) / w  # bases t .. t+w-1
        zp = torch.cat([torch.full((32,), 4, dtype=z.dtype), z, torch.full((32,), 4, dtype=z.dtype)])
        b = torch.arange(n + 1)
        bsig = []
        for s, (lo, hi) in self.SIGNALS.items():
            score = torch.zeros(n + 1)
            for o in range(lo, hi):
                x = zp[b + o + 32]
                score = score + torch.where(x != 4, self.pwm[s][o - lo, x.clamp(max=3)], torch.zeros(()))
            bsig.append(score)
        return torch.cat([left, right], 1), torch.stack(bsig, 1)

    def _raw(self, loc):
        z, n = loc.codes, len(loc)
        tok_p, bnd_p = self._one_strand(z)
        tok_m, bnd_m = self._one_strand(revcomp_codes(z))
        # the − strand back in locus coordinates: token t <- n-1-t; a segment starting at t <- boundary n-t
        tok_m = tok_m.flip(0)
        bnd_m = bnd_m.flip(0)[:n]  # index t holds boundary n - t
        return torch.cat([tok_p, tok_m, bnd_p[:n], bnd_m], 1)

    def transform(self, loc) -> torch.Tensor:
        """(n, 20) standardised features of a locus."""
        return ((self._raw(loc) - self.mean) / self.std).float()

    @property
    def channels(self) -> int:
        return 20


# ------------------------------------------------------------------------------------------------
# training and evaluation
def tqdm(iterable, **kwargs):
    """Progress bars with tqdm (the ``demo`` extra); plain iteration without it."""
    try:
        from tqdm import tqdm as bar
    except ImportError:
        return _NoBar(iterable)
    return bar(iterable, **kwargs)


class _NoBar:
    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return iter(self.it)

    def set_postfix(self, *a, **k):
        pass


def train(model, loci, args, device, seed: int):
    rng = random.Random(seed)
    head_params = [p for h in model.heads.values() for p in h.parameters()]
    ids = {id(p) for p in head_params}
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) not in ids]},
                             {"params": head_params, "lr": args.lr * args.head_lr_mult}], lr=args.lr, weight_decay=1e-4)
    warm = max(1, args.steps // 20)  # linear warm-up, then cosine decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(i, args.steps) / args.steps))))
    queue, losses = [], []
    model.train()
    t0 = time.perf_counter()
    kinds = list(model.heads)
    bar = tqdm(range(args.steps), desc=f"train {'+'.join(kinds)}", dynamic_ncols=True, mininterval=1.0)
    for _ in bar:
        if not queue:
            wins = make_windows(loci, args.window, rng)
            lens = [loci[li].segments[j - 1][1] - loci[li].segments[i][0] for li, i, j in wins]
            keep = [k for k, n in enumerate(lens) if n <= args.max_window]
            wins, lens = [wins[k] for k in keep], [lens[k] for k in keep]
            groups = batches_by_length(wins, lens, args.max_tokens, args.batch)
            rng.shuffle(groups)
            queue = [[wins[k] for k in g] for g in groups]
        codes, xfeat, lengths, gold, prev, nxt = window_batch(loci, queue.pop(), model.flank)
        feats = model.features(codes.to(device), None if xfeat is None else xfeat.to(device))
        parts = [model.heads[k].loss(feats, lengths.to(device), gold, reduction="token",
                                     prev_labels=prev.to(device), next_labels=nxt.to(device)) for k in kinds]
        opt.zero_grad(set_to_none=True)
        sum(parts).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append([float(x.detach()) for x in parts])
        recent = losses[-20:]
        bar.set_postfix({f"nll/bp {k}": f"{sum(r[i] for r in recent) / len(recent):.3f}" for i, k in enumerate(kinds)})
    recent = losses[-20:]
    return {"seconds": time.perf_counter() - t0, "steps": args.steps,
            "final_nll_per_bp": {k: sum(r[i] for r in recent) / len(recent) for i, k in enumerate(kinds)}}


@torch.no_grad()
def predict(model, loci, args, kind: str, device):
    """Viterbi segments of whole loci (user labels)."""
    model.eval()
    F = model.flank
    lens = [len(l) for l in loci]
    groups = batches_by_length(loci, lens, args.eval_tokens, 64)
    preds = [None] * len(loci)
    t0 = time.perf_counter()
    for g in tqdm(groups, desc=f"decode {kind:<7}", dynamic_ncols=True, mininterval=1.0):
        codes, xfeat = padded_inputs([(loci[k], 0, lens[k]) for k in g], max(lens[k] for k in g), F)
        feats = model.features(codes.to(device), None if xfeat is None else xfeat.to(device))
        segs = model.heads[kind].decode(feats, torch.tensor([lens[k] for k in g], device=device))
        for r, k in enumerate(g):
            preds[k] = segs[r]
    return preds, time.perf_counter() - t0


def prf(tp, npred, ngold):
    p = tp / npred if npred else 0.0
    r = tp / ngold if ngold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp, "pred": npred, "gold": ngold}


def evaluate(loci, preds):
    ex_tp = ex_pred = ex_gold = 0
    g_tp = g_pred = g_gold = 0
    b_tp = b_pred = b_gold = 0
    for loc, pred in zip(loci, preds):
        gold_ex = {(s, e, c) for s, e, c in loc.segments if c in (EXP, EXM)}
        pred_ex = {(s, e, c) for s, e, c in pred if c in (EXP, EXM)}
        ex_tp += len(gold_ex & pred_ex)
        ex_pred += len(pred_ex)
        ex_gold += len(gold_ex)
        gold_g, pred_g = set(loc.genes), set(segments_to_genes(pred))
        g_tp += len(gold_g & pred_g)
        g_pred += len(pred_g)
        g_gold += len(gold_g)
        gl = torch.zeros(len(loc), dtype=torch.long)
        pl = torch.zeros(len(loc), dtype=torch.long)
        for s, e, c in loc.segments:
            gl[s:e] = c
        for s, e, c in pred:
            pl[s:e] = c
        gc, pc = (gl == EXP) | (gl == EXM), (pl == EXP) | (pl == EXM)
        b_tp += int((gc & pc & (gl == pl)).sum())
        b_pred += int(pc.sum())
        b_gold += int(gc.sum())
    return {"exon": prf(ex_tp, ex_pred, ex_gold), "gene": prf(g_tp, g_pred, g_gold), "coding_base": prf(b_tp, b_pred, b_gold)}


@torch.no_grad()
def posterior_plot(models, locus, path: Path, device):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colors = {IG: "#bbbbbb", EXP: "#1f77b4", INP: "#aec7e8", EXM: "#d62728", INM: "#ff9896"}
    fig, axes = plt.subplots(len(models) + 1, 1, figsize=(13, 2.4 * len(models) + 1.6), sharex=True,
                             gridspec_kw={"height_ratios": [3] * len(models) + [1.6]})
    n = len(locus)
    x = torch.arange(n).numpy()
    tracks = [("gold", locus.segments)]
    for ax, (name, model, kind) in zip(axes, models):
        model.eval()
        F = model.flank
        codes, xfeat = padded_inputs([(locus, 0, n)], n, F)
        feats = model.features(codes.to(device), None if xfeat is None else xfeat.to(device))
        dist = model.heads[kind](feats, torch.tensor([n], device=device))
        tok = dist.marginals.token[0].float().cpu()
        for c in (EXP, INP, EXM, INM):
            ax.fill_between(x, 0, tok[:, c].numpy(), color=colors[c], alpha=0.8, label=GENE_LABELS[c], step="mid")
        ax.plot(x, tok[:, IG].numpy(), color="k", lw=0.6, label="intergenic")
        if True:
            ax.plot(x, dist.marginals.start[0].float().cpu().numpy(), color="#2ca02c", lw=0.8, label="P(segment start)")
        segs = dist.argmax.segments()[0]
        tracks.append((name, segs))
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"{name}\nposterior")
        ax.legend(loc="upper right", fontsize=7, ncol=6, frameon=False)
    ax = axes[-1]
    for row, (name, segs) in enumerate(tracks):
        y = len(tracks) - 1 - row
        for s, e, c in segs:
            h = 0.8 if c in (EXP, EXM) else 0.3 if c in (INP, INM) else 0.1
            ax.add_patch(Rectangle((s, y - h / 2), e - s, h, color=colors[c], lw=0))
            if c != IG:
                ax.axvline(s, color="k", lw=0.3, alpha=0.3)
        ax.text(-0.005 * n, y, name, ha="right", va="center", fontsize=8)
    ax.set_ylim(-0.6, len(tracks) - 0.4)
    ax.set_yticks([])
    ax.set_xlim(0, n)
    ax.set_xlabel(f"{locus.name} (test locus), base position")
    fig.suptitle("Posterior label marginals and Viterbi segments (blue: + strand, red: − strand; dark: exon, light: intron)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="all loci, longer training (use a GPU: --device cuda)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-train-len", type=int, default=None, help="train on loci up to this length (default: all)")
    ap.add_argument("--max-window", type=int, default=None,
                    help="skip training windows longer than this (a window holds whole segments; default 6000; --full: none)")
    ap.add_argument("--max-test-len", type=int, default=None, help="test on loci up to this length (default 8000; --full: all)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 100; --full: 400)")
    ap.add_argument("--K", type=int, default=64, help="longest segment piece of the semi-CRF")
    ap.add_argument("--duration", default="negbin", choices=["table", "geometric", "poisson", "negbin"])
    ap.add_argument("--window", type=int, default=None, help="training window, bases (default 1000; --full: 4000)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=None, help="bases per training batch (default 48k; --full: 256k)")
    ap.add_argument("--eval-tokens", type=int, default=400_000, help="bases per decoding batch")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--dilations", default="", help="dilations of residual CNN blocks on top of the input convolution, "
                    "e.g. 1,2,4,8,16,1 (default: none; deeper CNNs trained worse at the default budget)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--head-lr-mult", type=float, default=10.0, help="learning-rate multiplier of the heads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU)")
    ap.add_argument("--models", default="semicrf,linear")
    ap.add_argument("--train", default="joint", choices=["joint", "separate"],
                    help="joint: one encoder, both heads trained on it (sum of the NLLs; default); "
                         "separate: one encoder per model, same initialisation and steps")
    ap.add_argument("--no-first-token", action="store_true", help="ablation: no first-base score channel")
    ap.add_argument("--no-features", action="store_true", help="ablation: one-hot DNA only, no count-based evidence channels")
    ap.add_argument("--out", default="runs/gene_structure")
    ap.add_argument("--save", action="store_true", help="also save the trained models' state_dicts to --out")
    args = ap.parse_args(argv)
    full = args.full
    args.max_train_len = args.max_train_len or 10**9
    args.max_window = args.max_window or (10**9 if full else 6000)
    args.max_test_len = args.max_test_len or (10**9 if full else 8000)
    args.steps = args.steps or (400 if full else 100)
    args.window = args.window or (4000 if full else 1000)
    args.max_tokens = args.max_tokens or (256_000 if full else 48_000)
    # the engine runs many small ops per position: on CPU one thread avoids OpenMP stalls
    torch.set_num_threads(args.threads or (1 if args.device == "cpu" else torch.get_num_threads()))
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    try:
        train_recs, test_recs = load_augustus_genes("train"), load_augustus_genes("test")
    except (DataUnavailable, ImportError) as err:  # no network, or the data extra missing
        sys.exit(f"error: {err}")
    train_loci = [Locus(r) for r in train_recs if len(r) <= args.max_train_len]
    test_loci = [Locus(r) for r in test_recs if len(r) <= args.max_test_len]
    featurizer = None
    if not args.no_features:
        featurizer = GeneFeatures().fit(train_loci)  # counts on the training loci only
        for loc in train_loci + test_loci:
            loc.feats = featurizer.transform(loc)
    print(f"train: {len(train_loci)}/{len(train_recs)} loci ({sum(map(len, train_loci)):,} bp); "
          f"test: {len(test_loci)}/{len(test_recs)} loci ({sum(map(len, test_loci)):,} bp, {len(test_loci)} genes)")

    results = {"command": "python examples/gene_structure.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "config": {k: v for k, v in vars(args).items()},
               "data": {"train_loci": len(train_loci), "train_bp": sum(map(len, train_loci)),
                        "test_loci": len(test_loci), "test_bp": sum(map(len, test_loci)),
                        "source": "Debian augustus-doc 3.5.0+dfsg-2, tutorial/results/genes.gb.{train,test}"},
               "hardware": {"device": str(device), "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "python": platform.python_version()},
               "date": time.strftime("%Y-%m-%d"), "models": {}}
    # a multi-exon test locus for the plot: the shortest one with >= 3 exons
    plot_locus = min((l for l in test_loci if sum(c in (EXP, EXM) for *_, c in l.segments) >= 3), key=len, default=test_loci[0])

    trained = []
    names = {"semicrf": f"semi-CRF (K={args.K}, {args.duration} durations)", "linear": "linear-chain CRF (BIES states, K=1)"}
    kinds = args.models.split(",")
    groups = [kinds] if args.train == "joint" else [[k] for k in kinds]
    for group in groups:
        torch.manual_seed(args.seed)  # the same encoder initialisation for every model
        encoder = DNAEncoder(args.hidden, 0 if featurizer is None else featurizer.channels,
                             dilations=tuple(int(d) for d in args.dilations.split(",") if d))
        heads = {k: make_head(k, args.hidden, args.K, args.duration, not args.no_first_token) for k in group}
        model = GeneModel(encoder, heads, flank=encoder.receptive_field // 2 + 1).to(device)
        tr = train(model, train_loci, args, device, args.seed)
        if args.save:
            torch.save(model.state_dict(), out / f"{'+'.join(group)}.pt")
        for kind in group:
            preds, dec_s = predict(model, test_loci, args, kind, device)
            metrics = evaluate(test_loci, preds)
            results["models"][kind] = {"name": names[kind], "train": tr, "decode_seconds": dec_s, "metrics": metrics,
                                       "head_parameters": sum(p.numel() for p in model.heads[kind].parameters()),
                                       "encoder_parameters": sum(p.numel() for p in encoder.parameters())}
            print(f"{names[kind]}: exon F1 {metrics['exon']['f1']:.3f}  gene F1 {metrics['gene']['f1']:.3f}  "
                  f"coding-base F1 {metrics['coding_base']['f1']:.3f}  (train {tr['seconds']:.0f} s, decode {dec_s:.0f} s)")
            trained.append((names[kind].split(" (")[0], model, kind))

    results["plot_locus"] = plot_locus.name
    results["total_seconds"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2))  # before the plot: results survive it
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    try:
        posterior_plot(trained, plot_locus, out / "posteriors.png", device)
    except ImportError as err:  # matplotlib comes with the `demo` extra (scripts/demo.sh installs it)
        print(f"no posteriors.png ({err}); pip install 'semiring_flash[demo]' for the plot")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'posteriors.png'} "
          f"(total {results['total_seconds']:.0f} s)")
    return results


def markdown(res) -> str:
    d = res["data"]
    lines = [
        f"Command: `{res['command'].strip()}` — {res['date']}, {res['hardware']['device']} "
        f"({res['hardware']['cpu_count']} CPU cores, torch {res['hardware']['torch']}), total {res.get('total_seconds', 0):.0f} s",
        "",
        f"Train: {d['train_loci']} loci ({d['train_bp']:,} bp), {res['config']['steps']} steps of ~{res['config']['max_tokens']:,}-base "
        f"window batches, training mode `{res['config']['train']}`; test: {d['test_loci']} loci ({d['test_bp']:,} bp).",
        "",
        "| model | exon P | exon R | exon F1 | gene P | gene R | gene F1 | coding-base F1 | train s | decode s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in res["models"].values():
        e, g, b = m["metrics"]["exon"], m["metrics"]["gene"], m["metrics"]["coding_base"]
        lines.append(f"| {m['name']} | {e['precision']:.3f} | {e['recall']:.3f} | **{e['f1']:.3f}** | {g['precision']:.3f} | "
                     f"{g['recall']:.3f} | **{g['f1']:.3f}** | {b['f1']:.3f} | {m['train']['seconds']:.0f} | {m['decode_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
