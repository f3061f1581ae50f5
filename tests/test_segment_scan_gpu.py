"""The one-node SegmentPotentials path on a GPU (compiled glue kernels) against the general path
(the same scan kernels behind autograd glue): every option, shared or per-batch parameters."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import semiring_flash as sf  # noqa: E402


@pytest.mark.parametrize("semiring", [sf.LogSemiring, sf.MaxSemiring], ids=["log", "max"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_batch"])
@pytest.mark.parametrize("option", ["plain", "init", "start", "cum", "strided"])
def test_segment_scan_on_gpu_equals_the_general_path(semiring, shared, option, monkeypatch):
    from test_segment_scan import _model, _value_and_grads

    from semiring_flash.ops.triton import segment_scan

    for tile in (segment_scan._TILE, 8):  # the real tiles, then several row blocks and batch chunks
        monkeypatch.setattr(segment_scan, "_TILE", tile)
        d, L = _model(shared, option, B=5, T=40, K=4, C=5)
        d, L = {k: v.cuda() for k, v in d.items()}, L.cuda()
        v_fast, g_fast = _value_and_grads(semiring, d, L, True)
        v_ref, g_ref = _value_and_grads(semiring, d, L, False)
        torch.testing.assert_close(v_fast, v_ref, rtol=1e-6, atol=1e-6)
        for name, a, b in zip(d, g_fast, g_ref):
            if b is None:
                assert a is None or not a.any(), name
                continue
            assert a.dtype == b.dtype and a.shape == b.shape, name
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
