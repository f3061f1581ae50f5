"""Property checks of ``semiring_flash.genbmm``, shared by the PyTorch-path tests
(test_genbmm.py), the Triton-interpreter tests (test_genbmm_interpret.py) and the GPU
tests (test_genbmm_gpu.py): each takes the backend (and device) to check.

Oracles: the float64 broadcasts of ``semiring_flash.ops.bmm_naive`` and autograd through
them, explicit first-argmax loops, and softmax probabilities for the sampler.
"""

from __future__ import annotations

import torch

from semiring_flash import genbmm
from semiring_flash.ops import bmm_naive as ref
from strategies import NEG, _structural_zeros

OPS = {
    "logbmm": (genbmm.logbmm, ref.logbmm_reference),
    "maxbmm": (genbmm.maxbmm, ref.maxbmm_reference),
    "samplebmm": (genbmm.samplebmm, ref.logbmm_reference),  # samplebmm's value is the logsumexp
    "prodmaxbmm": (genbmm.prodmaxbmm, ref.prodmaxbmm_reference),
}


def operands(B, n, k, m, seed, dtype=torch.float64, device="cpu", neg=0.0, transposed=False):
    """Random (a, b); ``neg``: probability of a −inf entry; whole −inf rows of a and
    columns of b when neg > 0; ``transposed``: non-contiguous views."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, n, k, generator=g, dtype=torch.float64)
    b = torch.randn(B, k, m, generator=g, dtype=torch.float64)
    if neg:
        _structural_zeros(g, a, neg)
        _structural_zeros(g, b, neg)
        a[0, n // 2, :] = NEG
        b[-1, :, m // 2] = NEG
    if transposed:
        a = a.transpose(1, 2).contiguous().transpose(1, 2)
        b = b.transpose(1, 2).contiguous().transpose(1, 2)
    return a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


def first_argmax(a, b, product=False):
    """int64 (B, n, m) first k reaching max_k of a ∘ b, by an explicit loop; −1 if all −inf."""
    B, n, K = a.shape
    best = torch.full((B, n, b.shape[2]), NEG, dtype=torch.float64, device=a.device)
    index = torch.full(best.shape, -1, dtype=torch.long, device=a.device)
    for k in range(K):
        v = (a[:, :, k, None] * b[:, None, k, :]) if product else (a[:, :, k, None] + b[:, None, k, :])
        better = v.double() > best
        best = torch.where(better, v.double(), best)
        index = torch.where(better, torch.full_like(index, k), index)
    return index


def indicator_grads(index, w_a, w_b, K):
    """(Σ_j [index=k] w_a[i,j], Σ_i [index=k] w_b[i,j]) by one-hot tensors (reference)."""
    hot = torch.nn.functional.one_hot(index.clamp(min=0), K).to(w_a.dtype) * (index >= 0).unsqueeze(-1)
    grad_a = torch.einsum("bijk,bij->bik", hot, w_a)
    grad_b = torch.einsum("bijk,bij->bkj", hot, w_b)
    return grad_a, grad_b


def check_forward(name, backend, a, b, atol=1e-12, rtol=1e-12):
    fn, oracle = OPS[name]
    out = fn(a, b, backend=backend)
    assert out.shape == (a.shape[0], a.shape[1], b.shape[2]) and out.dtype == a.dtype and out.device == a.device
    expected = oracle(a.double(), b.double())
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)  # −inf where expected is −inf


def check_logbmm_grads(backend, a, b, seed=0, atol=1e-10, rtol=1e-10):
    """Gradients = softmax-weighted sums of the adjoint (the broadcast's softmax in float64,
    0 for all −inf outputs); finite everywhere."""
    g = torch.randn(a.shape[0], a.shape[1], b.shape[2], generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(a.device)
    probs = torch.nan_to_num(ref.log_weights_reference(a.double(), b.double()), nan=0.0)  # (B, n, k, m)
    want = (torch.einsum("bikj,bij->bik", probs, g), torch.einsum("bikj,bij->bkj", probs, g))
    a2, b2 = a.detach().requires_grad_(), b.detach().requires_grad_()
    got = torch.autograd.grad(genbmm.logbmm(a2, b2, backend=backend), (a2, b2), g.to(a.dtype))
    for x, y in zip(got, want):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x.double(), y, atol=atol, rtol=rtol)
    return got


def check_argmax_grads(name, backend, a, b, seed=0):
    """maxbmm / prodmaxbmm gradients = indicator of the FIRST argmax k (times b or a for prodmax)."""
    product = name == "prodmaxbmm"
    fn = OPS[name][0]
    g = torch.randn(a.shape[0], a.shape[1], b.shape[2], generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(a.device)
    a2, b2 = a.detach().requires_grad_(), b.detach().requires_grad_()
    got = torch.autograd.grad(fn(a2, b2, backend=backend), (a2, b2), g.to(a.dtype))
    index = first_argmax(a, b, product)
    w_a = w_b = g
    if product:
        safe = index.clamp(min=0)
        w_a = g * b.double().gather(1, safe)  # b[k*, j]
        w_b = g * a.double().gather(2, safe)  # a[i, k*]
    want = indicator_grads(index, w_a, w_b, a.shape[2])
    for x, y in zip(got, want):
        torch.testing.assert_close(x.double(), y, atol=1e-12, rtol=1e-12)


def sampled_indices(backend, a, b):
    """The k drawn by samplebmm for every output, read off its gradient (B, n, m)."""
    a2, b2 = a.detach().requires_grad_(), b.detach().requires_grad_()
    out = genbmm.samplebmm(a2, b2, backend=backend)
    # a distinct power-of-two weight per column j: grad_a[i, k] = Σ_{j drawn k} 2^j decodes j ↦ k
    B, n, m = out.shape
    weights = (2.0 ** torch.arange(m, dtype=torch.float64, device=a.device)).expand(B, n, m)
    grad_a, grad_b = torch.autograd.grad(out, (a2, b2), weights.to(a.dtype))
    bits = grad_a.double().round().long()  # (B, n, K)
    index = torch.full((B, n, m), -1, dtype=torch.long, device=a.device)
    for j in range(m):
        hit = ((bits >> j) & 1).bool()  # (B, n, K): at most one k per (i, j)
        assert (hit.sum(-1) <= 1).all()
        index[:, :, j] = torch.where(hit.any(-1), hit.long().argmax(-1), -1)
    # grad_b must route through the same draws
    _, want_b = indicator_grads(index, weights.double(), weights.double(), a.shape[2])
    torch.testing.assert_close(grad_b.double(), want_b)
    return index


def check_sample_frequencies(backend, a, b, draws):
    """Over ``draws`` copies of one (1, n, k, m) problem (stacked along n: few programs),
    the frequency of each k is the softmax probability within 5 binomial standard
    deviations (+ a small floor), and −inf terms are never drawn."""
    n, K = a.shape[1], a.shape[2]
    index = sampled_indices(backend, a.repeat(1, draws, 1), b).view(draws, n, -1)
    probs = ref.log_weights_reference(a.double(), b.double())[0]  # (n, K, m)
    assert (index >= 0).all()
    freq = torch.nn.functional.one_hot(index, K).double().mean(0).permute(0, 2, 1)  # (n, K, m)
    sd = (probs * (1 - probs) / draws).sqrt()
    assert ((freq - probs).abs() <= 5 * sd + 1e-3).all(), (freq, probs)
    assert (freq[probs == 0] == 0).all()
