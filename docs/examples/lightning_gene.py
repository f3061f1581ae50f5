"""PyTorch Lightning + SemiCRFHead, single process or DDP (optional extra: ``pip install lightning``).

The LightningModule wraps the gene-structure model of ``examples/gene_structure.py``
(dilated CNN over one-hot DNA + semi-CRF head). ``training_step`` returns the
head's exact NLL; Lightning's DDP strategy averages the gradients over
processes exactly like plain DDP (``tests/test_ddp.py`` checks that the
synchronised gradients equal single-process ones).

    python docs/examples/lightning_gene.py --fixture --smoke                        # tiny smoke run (committed slice)
    python docs/examples/lightning_gene.py --devices 2 --strategy ddp --max-steps 200  # 2 CPU processes (gloo)
    python docs/examples/lightning_gene.py --accelerator gpu --devices 2 --strategy ddp --max-steps 2000

Note on DDP: return the loss (a tensor) from the step, as here. If you wrap the
head directly in ``DistributedDataParallel`` and return the distribution
object from ``forward``, keep ``find_unused_parameters=False`` (the default).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout; examples/ is not an installed package

try:
    import lightning as L  # noqa: E402
except ImportError as err:  # an optional extra: say which
    raise SystemExit(f"{err}: this example needs PyTorch Lightning (pip install \"semiring_flash[lightning]\")") from err

from examples.gene_structure import (DNAEncoder, GeneFeatures, Locus, make_head, make_windows,  # noqa: E402
                                   padded_inputs, window_batch)
from semiring_flash.data import load_augustus_genes, parse_genbank  # noqa: E402


class WindowData(torch.utils.data.IterableDataset):
    """Endless stream of window batches (whole gold segments, ~``window`` bases each)."""

    def __init__(self, loci, window, batch, flank, seed):
        self.loci, self.window, self.batch, self.flank, self.seed = loci, window, batch, flank, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        rng = random.Random(self.seed + 1000 * rank + (info.id if info else 0))  # each rank its own windows
        while True:
            wins = make_windows(self.loci, self.window, rng)
            rng.shuffle(wins)
            for i in range(0, len(wins) - self.batch + 1, self.batch):
                yield window_batch(self.loci, wins[i:i + self.batch], self.flank)


class GeneTagger(L.LightningModule):
    def __init__(self, hidden=64, K=64, duration="negbin", lr=3e-3, head_lr_mult=10.0, channels=20):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = DNAEncoder(hidden, channels)
        self.head = make_head("semicrf", hidden, K, duration)
        self.flank = self.encoder.receptive_field // 2 + 1

    def features(self, codes, feats=None):
        h = self.encoder(codes, feats)
        return h[:, self.flank:h.shape[1] - self.flank]

    def training_step(self, batch, _):
        codes, feats, lengths, gold, prev, nxt = batch
        loss = self.head.loss(self.features(codes, feats), lengths, gold, reduction="token",
                              prev_labels=prev, next_labels=nxt)
        self.log("nll_per_bp", loss, prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        lr = self.hparams.lr
        return torch.optim.AdamW([{"params": self.encoder.parameters()},
                                  {"params": self.head.parameters(), "lr": lr * self.hparams.head_lr_mult}],
                                 lr=lr, weight_decay=1e-4)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixture", action="store_true", help="train on the 7 committed test-fixture loci (no download)")
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--K", type=int, default=64, help="longest segment piece of the semi-CRF head")
    ap.add_argument("--smoke", action="store_true",
                    help="a seconds-long check of the plumbing: 2 steps, 2 windows of ~300 bases, hidden 8, K 40 (the shortest intron)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.max_steps, args.batch, args.window, args.hidden, args.K = 2, 2, 300, 8, 40
    if args.fixture:
        recs = parse_genbank(ROOT / "tests" / "fixtures" / "augustus_genes_slice.gb")
    else:
        recs = [r for r in load_augustus_genes("train") if len(r) <= 3000]
    loci = [Locus(r) for r in recs]
    featurizer = GeneFeatures().fit(loci)  # count-based evidence channels, from the training loci
    for loc in loci:
        loc.feats = featurizer.transform(loc)
    model = GeneTagger(hidden=args.hidden, K=args.K, channels=featurizer.channels)
    data = torch.utils.data.DataLoader(WindowData(loci, args.window, args.batch, model.flank, seed=0),
                                       batch_size=None, collate_fn=lambda x: x)
    trainer = L.Trainer(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
                        max_steps=args.max_steps, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        log_every_n_steps=5, enable_progress_bar=not args.smoke, enable_model_summary=not args.smoke)
    trainer.fit(model, data)
    if trainer.is_global_zero:
        with torch.no_grad():
            loc = loci[0]
            F = model.flank
            codes, feats = padded_inputs([(loc, 0, len(loc))], len(loc), F)
            model.eval()
            segs = model.head.decode(model.features(codes.to(model.device), feats.to(model.device)))[0]
            print(f"{loc.name}: gold {loc.segments}\n  decoded {segs}")


if __name__ == "__main__":
    main()
