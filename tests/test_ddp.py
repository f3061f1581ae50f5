"""DistributedDataParallel: 2 CPU processes (gloo) give the gradients of one process on the whole batch.

Two usage patterns are checked:
- "loss": the wrapped module's forward returns the head's loss (works with any DDP option);
- "dist": the wrapped module's forward returns the SegmentCRF distribution and the
  loss is taken outside (needs find_unused_parameters=False, the default).
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from semiring_flash.nn import SemiCRFHead

B, T, H, C, K = 8, 40, 6, 3, 5


class Tagger(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.encoder = nn.Sequential(nn.Linear(H, 16), nn.Tanh(), nn.Linear(16, 16))
        self.head = SemiCRFHead(16, C, K, duration="negbin", long_segments=[True, False, True],
                                first_token=(mode == "loss"), min_duration=[1, 2, 1],
                                allowed_transitions=~torch.eye(C, dtype=torch.bool))

    def forward(self, x, lengths, gold=None):
        feats = self.encoder(x)
        if self.mode == "loss":
            return self.head.loss(feats, lengths, gold)
        return self.head(feats, lengths)


def make_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    gold = []
    for b in range(B):
        L, s, segs, prev = int(lengths[b]), 0, [], -1
        while s < L:
            choices = [c for c in range(C) if c != prev and (c != 1 or L - s >= 2)]
            c = choices[int(torch.randint(0, len(choices), (1,), generator=g))]
            hi = min(K if c == 1 else 12, L - s)  # label 1: 2..K tokens; labels 0, 2: any length (chained)
            d = int(torch.randint(2 if c == 1 else 1, hi + 1, (1,), generator=g))
            segs.append((s, s + d, c))
            s, prev = s + d, c
        gold.append(segs)
    return x, lengths, gold


def loss_of(model, mode, x, lengths, gold):
    if mode == "loss":
        return model(x, lengths, gold)
    return -model(x, lengths).log_prob(gold).mean()


def reference_grads(mode, device="cpu", dtype=torch.float64):
    torch.manual_seed(0)
    model = Tagger(mode).to(device, dtype)
    x, lengths, gold = make_data()
    loss_of(model, mode, x.to(device, dtype), lengths.to(device), gold).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, world, port, mode, out_dir, backend="gloo", dtype=torch.float64, device_type="cpu"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    # CUDA ranks take GPUs round robin (2 ranks may share one GPU under gloo; NCCL needs one each)
    device = torch.device("cuda", rank % torch.cuda.device_count()) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        torch.manual_seed(0)  # same initial parameters on every rank (DDP also broadcasts rank 0's)
        model = nn.parallel.DistributedDataParallel(Tagger(mode).to(device, dtype),
                                                    device_ids=[device.index] if device.type == "cuda" else None)
        x, lengths, gold = make_data()
        shard = slice(rank * B // world, (rank + 1) * B // world)
        # local mean over an equal share; DDP averages over ranks -> the full-batch mean
        loss_of(model, mode, x[shard].to(device, dtype), lengths[shard].to(device), gold[shard]).backward()
        grads = {n.removeprefix("module."): p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
        torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # let both ranks finish before tearing the group down (avoids aborts at exit)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_ddp_matches_single_process(mode, backend="gloo", device_type="cpu", dtype=torch.float64, rtol=1e-9, atol=1e-12):
    device = "cuda:0" if device_type == "cuda" else "cpu"
    ref = {k: v.cpu() for k, v in reference_grads(mode, device, dtype).items()}
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, _free_port(), mode, tmp, backend, dtype, device_type), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    assert set(ranks[0]) == set(ref), (set(ranks[0]) ^ set(ref))
    for name, g in ref.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name}: ranks disagree"
        assert torch.allclose(ranks[0][name], g, rtol=rtol, atol=atol), f"{name}: DDP != single process"


@pytest.mark.slow  # spawns two processes
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed")
@pytest.mark.parametrize("mode", ["loss", "dist"])
def test_ddp_gradients_equal_single_process(mode):
    check_ddp_matches_single_process(mode)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_gloo_available(), reason="needs CUDA and gloo")
@pytest.mark.parametrize("mode", ["loss", "dist"])
def test_ddp_gradients_cuda_tensors_gloo(mode):
    """2 ranks on CUDA tensors (Triton kernels), sharing GPU 0 when there is one; float32."""
    check_ddp_matches_single_process(mode, "gloo", "cuda", torch.float32, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2 or not dist.is_nccl_available(),
                    reason="needs 2 CUDA devices and NCCL")
@pytest.mark.parametrize("mode", ["loss", "dist"])
def test_ddp_gradients_nccl_two_gpus(mode):
    """The same check with NCCL on 2 GPUs (float32; Triton kernels where available)."""
    check_ddp_matches_single_process(mode, "nccl", "cuda", torch.float32, rtol=1e-4, atol=1e-6)
