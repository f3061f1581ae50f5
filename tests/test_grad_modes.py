"""Every property under torch.no_grad() and torch.inference_mode() (inputs made inside or outside the mode),
on the torch engine and the Triton kernels (interpreted), through SemiCRFHead and Lightning's
validate/predict; plus the torch.distributions conventions: sample(generator=), kl_divergence, help().
"""

from __future__ import annotations

import os
import pydoc

import pytest
import torch

import semiring_flash as sf
from semiring_flash.nn import SemiCRFHead
from semiring_flash.ops import naive

MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
B, T, K, C = 2, 5, 3, 2
TOKENS = torch.tensor([5, 3])


def _factored(seed: int, requires_grad: bool = False) -> sf.SegmentPotentials:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_(requires_grad)  # noqa: E731
    duration = torch.randn(K, C, generator=g)
    duration[K - 1, 0] = float("-inf")  # a structural zero must survive every mode
    return sf.SegmentPotentials(r(B, T, C), transition=r(C, C), duration=duration.requires_grad_(requires_grad),
                                end=r(C), lengths=TOKENS.clone())


def _edges(seed: int, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, K + 1, C, C, generator=g).requires_grad_(requires_grad)


def _pair(kind: str, requires_grad: bool = False, backend: str = "torch") -> tuple:
    if kind == "factored":
        return tuple(sf.SemiMarkovCRF(_factored(s, requires_grad), backend=backend) for s in (0, 1))
    return tuple(sf.SemiMarkovCRF(_edges(s, requires_grad), lengths=TOKENS + 1, backend=backend) for s in (0, 1))


def _properties(d: sf.SemiMarkovCRF, q: sf.SemiMarkovCRF) -> dict:
    """Every result a user reads off a distribution, as tensors (computed in the caller's grad mode)."""
    arg, top = d.argmax, d.topk(2)
    smp = d.sample((3,), generator=torch.Generator().manual_seed(7))
    out = dict(partition=d.partition, max=d.max, entropy=d.entropy, kmax=d.kmax(2), log_prob=d.log_prob(arg))
    if d.backend == "torch":  # the two-distribution semirings have no Triton kernels
        out.update(kl=d.kl(q), cross_entropy=d.cross_entropy(q))
    if d.factored:
        m = d.marginals
        out.update(argmax=arg.labels, argmax_starts=arg.starts, topk=top.labels, topk_starts=top.starts,
                   sample=smp.labels, sample_starts=smp.starts, token=m.token, start=m.start,
                   duration=m.duration, transition=m.transition, segment=d.segment_marginals())
    else:
        out.update(argmax=arg, topk=top, sample=smp, marginals=d.marginals)
    return out


def _assert_same(got: dict, ref: dict):
    assert got.keys() == ref.keys()
    for name, r in ref.items():
        assert not got[name].requires_grad, f"{name} carries a graph under a no-grad mode"
        torch.testing.assert_close(got[name], r.detach(), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("made_inside", [False, True], ids=["inputs-outside", "inputs-inside"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", ["factored", "edges"])
def test_every_property_under_no_grad_modes(kind, mode, made_inside):
    ref = _properties(*_pair(kind))
    if made_inside:  # under inference_mode these are inference tensors
        with MODES[mode]():
            got = _properties(*_pair(kind))
    else:  # potentials that require grad, read under the mode: still no graph
        pair = _pair(kind, requires_grad=True)
        with MODES[mode]():
            got = _properties(*pair)
    _assert_same(got, ref)


def test_inference_inputs_are_not_modified():
    with torch.inference_mode():
        scores = torch.randn(B, T, C)
        pots = sf.SegmentPotentials(scores, transition=torch.randn(C, C), duration=torch.randn(K, C))
        before = scores.clone()
        sf.SemiMarkovCRF(pots).marginals
    assert scores.is_inference() and not scores.requires_grad and torch.equal(scores, before)


@pytest.mark.parametrize("mode", list(MODES))
def test_head_decode_and_properties_under_no_grad_modes(mode):
    torch.manual_seed(0)
    head = SemiCRFHead(4, 3, 3, duration="negbin", long_segments=True)
    x, lengths = torch.randn(2, 7, 4), torch.tensor([7, 4])
    ref_dist = head(x, lengths)
    ref = (head.decode(x, lengths), ref_dist.marginals.token.detach(), ref_dist.topk(2).labels)
    with MODES[mode]():
        dist = head(x, lengths)
        got = (head.decode(x, lengths), dist.marginals.token, dist.topk(2).labels)
        smp = dist.sample((2,), generator=torch.Generator().manual_seed(0))
    assert got[0] == ref[0]
    torch.testing.assert_close(got[1], ref[1])
    assert torch.equal(got[2], ref[2])
    assert torch.isfinite(dist.log_prob(smp)).all()


# -- Triton kernels (interpreted on CPU) --------------------------------------------------------------------
def _interpreted_triton():
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        from semiring_flash.ops.triton.kernels import scan_fwd_kernel
    except Exception:  # no triton
        return False
    return type(scan_fwd_kernel).__name__ == "InterpretedFunction"


@pytest.mark.triton_interpret
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")
@pytest.mark.skipif(not _interpreted_triton(), reason="needs triton with TRITON_INTERPRET=1 on a CPU-only machine")
@pytest.mark.parametrize("kind", ["factored", "edges"])
def test_triton_properties_under_inference_mode(kind):
    def read(d):  # the properties issue 12 saw fail on CUDA, and the rest of the list (interpreter: keep it short)
        arg, top, smp = d.argmax, d.topk(2), d.sample((2,), generator=torch.Generator().manual_seed(5))
        m = d.marginals
        if d.factored:
            arg, top, smp, m = arg.labels, top.labels, smp.labels, m.token
        return dict(argmax=arg, topk=top, sample=smp, marginals=m, entropy=d.entropy)

    ref = read(_pair(kind)[0])
    with torch.inference_mode():
        got = read(_pair(kind, backend="triton")[0])
    _assert_same(got, ref)


# -- torch.distributions conventions -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["factored", "edges"])
def test_sample_generator_reproducible_and_leaves_global_rng(kind):
    d = _pair(kind)[0]
    unpack = (lambda s: s.labels) if kind == "factored" else (lambda s: s)
    a = unpack(d.sample((4,), generator=torch.Generator().manual_seed(11)))
    state = torch.get_rng_state()
    b = unpack(d.sample((4,), generator=torch.Generator().manual_seed(11)))
    assert torch.equal(torch.get_rng_state(), state), "sampling with a generator consumed the global RNG"
    assert torch.equal(a, b)
    c = unpack(d.sample((4,), generator=torch.Generator().manual_seed(12)))
    assert not torch.equal(a, c), "another seed gave the same 4x2 samples: the generator is ignored"
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        d.sample((1,), generator=5)


@pytest.mark.parametrize("kind", ["factored", "edges"])
def test_kl_divergence_registered(kind):
    p, q = _pair(kind)
    kl = torch.distributions.kl_divergence(p, q)
    torch.testing.assert_close(kl, p.kl(q))
    for b in range(B):
        L = int(TOKENS[b])
        if kind == "factored":
            paths = [naive.enumerate_factored_paths(
                x.scores[b], x.transition, x.duration, end=x.end, length=L) for x in (p.potentials, q.potentials)]
        else:
            paths = [naive.enumerate_edge_paths(x.potentials[b], L) for x in (p, q)]
        torch.testing.assert_close(kl[b].double(), naive.oracle_kl(*paths), rtol=1e-4, atol=1e-4)


def test_lazy_values_are_properties_in_help_and_cached():
    text = pydoc.render_doc(sf.SemiMarkovCRF, renderer=pydoc.plaintext)
    props = text[text.index("Readonly properties defined here"):]
    for name in ("partition", "marginals", "argmax", "entropy", "max", "mode"):
        assert f"\n |  {name}\n" in props, name
    d = _pair("factored")[0]
    assert d.partition is d.partition and d.marginals is d.marginals


# -- Lightning (optional extra) ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_lightning_validate_and_predict_with_default_inference_mode(tmp_path):
    L = pytest.importorskip("lightning")

    class Tagger(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = SemiCRFHead(4, 3, 3)

        def validation_step(self, batch, _):
            assert torch.is_inference_mode_enabled()  # Lightning's default: the case that used to crash
            x, lengths = batch
            dist = self.head(x, lengths)
            assert self.head.decode(x, lengths) and dist.topk(2).labels.shape == (2, *x.shape[:2])
            assert torch.isfinite(dist.marginals.token).all() and torch.isfinite(dist.entropy).all()
            assert torch.isfinite(dist.log_prob(dist.sample((2,)))).all()

        def predict_step(self, batch, _):
            return self.head.decode(*batch)

    torch.manual_seed(0)
    batch = (torch.randn(2, 6, 4), torch.tensor([6, 3]))
    data = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=1, limit_predict_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    assert trainer.validate(Tagger(), data, verbose=False) is not None
    model = Tagger()
    (pred,) = trainer.predict(model, data)
    assert pred == model.head.decode(*batch)
