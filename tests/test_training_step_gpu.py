"""A training step through the public API on the GPU (pytest -m gpu; skipped without CUDA):
no device synchronisation after the first call, CUDA-graph capture and replay, torch.compile.

The step: a Linear layer's output as per-token scores, SegmentPotentials, partition,
backward, an optimizer step.
"""

import pytest
import torch

from conftest import require_gpu_kernels

pytestmark = [pytest.mark.gpu]
require_gpu_kernels()

import semiring_flash as sf  # noqa: E402

DEV = "cuda"
B, T, K, C, F = 8, 40, 6, 5, 7


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emit = torch.nn.Linear(F, C)
        self.transition = torch.nn.Parameter(0.3 * torch.randn(C, C, generator=g))
        self.duration = torch.nn.Parameter(0.3 * torch.randn(K, C, generator=g))

    def forward(self, x, lengths):
        pots = sf.SegmentPotentials(self.emit(x), transition=self.transition, duration=self.duration, lengths=lengths)
        return sf.SemiMarkovCRF(pots).partition.mean()


def _batch(seed=1):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(B, T, F, generator=g, device=DEV)
    lengths = torch.randint(1, T + 1, (B,), generator=g, device=DEV)
    return x, lengths


def _step(model, opt, x, lengths):
    opt.zero_grad(set_to_none=False)
    loss = model(x, lengths)
    loss.backward()
    opt.step()
    return loss


_INITIAL = {}


def _model_and_opt():
    """Identical fresh models (nn.Linear draws from the global RNG: copy one state)."""
    model = Tagger().to(DEV)
    if not _INITIAL:
        _INITIAL.update({k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(_INITIAL)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_step_does_not_synchronise_after_the_first_call():
    model, opt = _model_and_opt()
    x, lengths = _batch()
    _step(model, opt, x, lengths)  # compiles the kernels, checks this signature's values
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        for _ in range(3):
            _step(model, opt, x, lengths)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_auto_validation_on_gpu_checks_a_signature_once_full_always():
    sf.set_validation("auto")  # forgets the signatures other tests checked
    model, _ = _model_and_opt()
    x, lengths = _batch()
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="contains NaN"):  # first call of this signature: checked
        sf.SegmentPotentials(bad[..., :C], transition=model.transition, duration=model.duration, lengths=lengths)
    sf.SegmentPotentials(x[..., :C], transition=model.transition, duration=model.duration, lengths=lengths)
    sf.SegmentPotentials(bad[..., :C], transition=model.transition, duration=model.duration, lengths=lengths)  # trusted
    with sf.validation_mode("full"), pytest.raises(ValueError, match="contains NaN"):
        sf.SegmentPotentials(bad[..., :C], transition=model.transition, duration=model.duration, lengths=lengths)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 40\]"):  # CPU lengths: checked on the host
        sf.SegmentPotentials(x[..., :C], transition=model.transition, duration=model.duration,
                             lengths=torch.full((B,), T + 1))


def test_cuda_graph_replay_matches_eager_training():
    x, lengths = _batch()
    eager, eager_opt = _model_and_opt()
    graphed, opt = _model_and_opt()
    eager_losses = [_step(eager, eager_opt, x, lengths).item() for _ in range(4)]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph: compiles, checks values once, makes .grad
        for _ in range(2):
            _step(graphed, opt, x, lengths)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = _step(graphed, opt, x, lengths)
    graphed.load_state_dict(_INITIAL)  # in place: the graph's parameters, back to the start
    losses = []
    for _ in range(4):
        graph.replay()
        losses.append(loss.item())
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager_losses), rtol=1e-6, atol=1e-6)
    for p, q in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_torch_compile_breaks_only_at_the_kernel_call():
    model, _ = _model_and_opt()
    x, lengths = _batch()
    explained = torch._dynamo.explain(model)(x, lengths)
    # the Triton call is torch.compiler.disable'd: dynamo reports that one break in its frame and the caller's
    assert explained.graph_break_count <= 2, [b.reason for b in explained.break_reasons]
    compiled = torch.compile(model)
    ref = model(x, lengths)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    out = compiled(x, lengths)
    grads = torch.autograd.grad(out, list(model.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
