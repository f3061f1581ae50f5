"""K = 1 head vs pytorch-crf on CPU: NLL forward + backward, and Viterbi decode.

    python benchmarks/linear_chain_bench.py            # ≈ 1 min on 2 cores
    python benchmarks/linear_chain_bench.py --repeats 50 --threads 1

At max_duration 1 ``SemiCRFHead`` is a linear-chain CRF; it should never be
slower than the library it generalises. Both get the same per-token emission
scores (B, T, C) (the head with ``in_features=None``; its duration table is 0),
the same ragged (B, T) mask and the same gold tags. Each repeat times one call
of each implementation back to back (interleaved, so load on a shared machine
hits both alike); the table reports medians and the ratio head / pytorch-crf
(< 1: the head is faster). The log-likelihoods and decodes are checked to agree
in the same run.

Outputs (``--out``, default benchmarks/results/): linear_chain_bench.json,
linear_chain_bench.md and linear_chain_bench.png.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torchcrf import CRF  # noqa: E402
from tqdm import tqdm  # noqa: E402

import semiring_flash as sf  # noqa: E402
from semiring_flash.collate import lengths_to_mask  # noqa: E402

CASES = [  # (B, T, C); the first is the one in the issue
    (32, 64, 9),
    (8, 256, 9),
    (32, 64, 32),
    (1, 1000, 5),
]


def _models(C: int):
    torch.manual_seed(0)
    head = sf.nn.SemiCRFHead(None, C, 1, backend="torch")
    crf = CRF(C, batch_first=True)
    with torch.no_grad():  # the same model in both
        for p in (crf.transitions, crf.start_transitions, crf.end_transitions):
            p.normal_(0, 0.5)
        head.transition.copy_(crf.transitions)
        head.start.copy_(crf.start_transitions)
        head.end.copy_(crf.end_transitions)
    return head, crf


def _inputs(B: int, T: int, C: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, C, generator=g)
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=g)
    lengths[0] = T
    mask = lengths_to_mask(lengths, T)
    tags = torch.randint(0, C, (B, T), generator=g).masked_fill(~mask, -100)
    return x, mask, tags


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_case(B: int, T: int, C: int, repeats: int, bar) -> dict:
    head, crf = _models(C)
    x, mask, tags = _inputs(B, T, C)

    def ours_fb():
        leaf = x.clone().requires_grad_()
        head.loss(leaf, gold=tags, mask=mask, reduction="sum").backward()

    def theirs_fb():
        leaf = x.clone().requires_grad_()
        (-crf(leaf, tags.clamp(min=0), mask, reduction="sum")).backward()

    ops = {
        "nll forward+backward": (ours_fb, theirs_fb),
        "decode": (lambda: head.decode(x, mask=mask, output="labels"), lambda: crf.decode(x, mask)),
    }
    with torch.no_grad():  # agreement, in the same run
        ll_head = -head.loss(x, gold=tags, mask=mask, reduction="none")
        ll_crf = crf(x, tags.clamp(min=0), mask, reduction="none")
        same_decode = head.decode(x, mask=mask, output="labels") == crf.decode(x, mask)
    out = {"B": B, "T": T, "C": C, "max_abs_loglik_diff": float((ll_head - ll_crf).abs().max()),
           "max_rel_loglik_diff": float(((ll_head - ll_crf).abs() / ll_crf.abs().clamp(min=1)).max()),
           "decode_equal": bool(same_decode), "ops": {}}
    for name, (ours, theirs) in ops.items():
        ours(), theirs()  # warm-up
        t_ours, t_theirs = [], []
        for _ in range(repeats):
            t_ours.append(_timed(ours))
            t_theirs.append(_timed(theirs))
            bar.update(1)
        m_ours, m_theirs = statistics.median(t_ours), statistics.median(t_theirs)
        out["ops"][name] = {"head_ms": 1e3 * m_ours, "pytorch_crf_ms": 1e3 * m_theirs, "ratio": m_ours / m_theirs,
                            "head_all_ms": [1e3 * t for t in t_ours], "pytorch_crf_all_ms": [1e3 * t for t in t_theirs]}
    return out


def _table(results: list) -> str:
    lines = ["| B | T | C | op | head (ms) | pytorch-crf (ms) | head / pytorch-crf |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, o in r["ops"].items():
            lines.append(f"| {r['B']} | {r['T']} | {r['C']} | {name} | {o['head_ms']:.2f} | "
                         f"{o['pytorch_crf_ms']:.2f} | {o['ratio']:.2f} |")
    return "\n".join(lines)


def _plot(results: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["ops"])
    labels = [f"B={r['B']} T={r['T']} C={r['C']}" for r in results]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([j + i * width for j in range(len(results))], [r["ops"][name]["ratio"] for r in results], width, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(results))], labels, fontsize=8)
    ax.set_ylabel("time ratio head / pytorch-crf")
    ax.set_title("SemiCRFHead at K = 1 vs pytorch-crf 0.7.2 (CPU; < 1: head faster)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, like the test-suite)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    results = []
    with tqdm(total=len(CASES) * 2 * args.repeats, desc="linear-chain bench") as bar:
        for B, T, C in CASES:
            results.append(run_case(B, T, C, args.repeats, bar))
    meta = {
        "command": "python benchmarks/" + os.path.basename(__file__) + " " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "torch": torch.__version__, "threads": args.threads, "repeats": args.repeats,
        "pytorch_crf": "0.7.2",
    }
    with open(os.path.join(args.out, "linear_chain_bench.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    table = _table(results)
    with open(os.path.join(args.out, "linear_chain_bench.md"), "w") as f:
        f.write(f"# K = 1 head vs pytorch-crf\n\n`{meta['command'].strip()}` — {meta['date_utc']} UTC, {meta['machine']}, "
                f"torch {meta['torch']}, {args.threads} thread(s), median of {args.repeats} interleaved repeats.\n\n"
                + table + "\n")
    print(table)
    try:
        _plot(results, os.path.join(args.out, "linear_chain_bench.png"))
    except ImportError as err:  # matplotlib is the `bench` extra: the table and the agreement check stand without it
        print(f"no plot ({err}); pip install 'semiring_flash[bench]' for linear_chain_bench.png")
    bad = [r for r in results if r["max_rel_loglik_diff"] > 1e-5 or not r["decode_equal"]]
    if bad:
        print("DISAGREEMENT with pytorch-crf:", [(r["B"], r["T"], r["C"], r["max_rel_loglik_diff"], r["decode_equal"]) for r in bad])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
