"""pytest over compat/scenarios.py: semiring_flash (through the drop-in shim) vs torch-struct."""

import warnings

import pytest
import torch

torch_struct = pytest.importorskip("torch_struct")

import semiring_flash as sf  # noqa: E402
import semiring_flash.torch_struct as sts  # noqa: E402
from compat.conformance import format_table, run_scenario  # noqa: E402
from compat.scenarios import SCENARIOS  # noqa: E402

warnings.filterwarnings("ignore", message=".*does not define `arg_constraints`.*")
torch.set_num_threads(min(2, torch.get_num_threads()))


#: scenarios of a few seconds each: CI only (-m "not slow" skips them)
SLOW_SCENARIOS = {"neginf_mixed_lengths", "neginf_duration", "wider_f32", "base_f64", "neginf_transition"}


@pytest.mark.parametrize("sc", [pytest.param(s, marks=pytest.mark.slow) if s.name in SLOW_SCENARIOS else s
                                for s in SCENARIOS], ids=[s.name for s in SCENARIOS])
def test_scenario_conforms(sc):
    rows = run_scenario(sc, n_samples=1000)
    failed = [r for r in rows if not r.ok]
    assert not failed, "\n" + format_table(failed)


def test_shim_names_and_one_line_switch():
    from semiring_flash.torch_struct import SemiMarkovCRF  # noqa: F401

    for name in ("SemiMarkovCRF", "SemiMarkov", "LogSemiring", "MaxSemiring", "EntropySemiring", "KMaxSemiring",
                 "CrossEntropySemiring", "KLDivergenceSemiring", "StructDistribution"):
        assert hasattr(sts, name), name
    e = torch.randn(2, 5, 3, 2, 2)
    d = sts.SemiMarkovCRF(e, args={})
    assert isinstance(d, sts.StructDistribution) and isinstance(d, sf.SemiMarkovCRF)
    assert d.struct is sts.SemiMarkov


def test_shim_semiring_arguments():
    e = torch.randn(2, 5, 3, 2, 2, dtype=torch.float64)
    want = sf.SemiMarkov(sf.MaxSemiring).sum(e)
    for sr in (sts.MaxSemiring, type(sf.MaxSemiring), torch_struct.MaxSemiring):
        torch.testing.assert_close(sts.SemiMarkov(sr).sum(e), want, rtol=0, atol=0)
    k3 = sts.SemiMarkov(torch_struct.KMaxSemiring(3)).sum(e, _raw=True)
    torch.testing.assert_close(k3, sf.SemiMarkov(sf.KMaxSemiring(3)).sum(e, _raw=True), rtol=0, atol=0)
    with pytest.raises(TypeError, match="KMaxSemiring\\(k\\)"):
        sts.SemiMarkov(sf.KMaxSemiring)
    # a semiring our engines do not run gets torch-struct's own SemiMarkov (tests/test_torch_struct_shim.py)
    assert isinstance(sts.SemiMarkov(torch_struct.StdSemiring), torch_struct.SemiMarkov)
    with pytest.raises(TypeError, match="not supported"):
        sts.as_semiring(torch_struct.StdSemiring)
    assert sts.SemiMarkov().semiring is sf.LogSemiring


@pytest.mark.parametrize("name", ["LinearChainCRF", "TreeCRF", "DependencyCRF", "AlignmentCRF", "CKY", "deptree_part"])
def test_shim_reexports_the_other_structures(name):
    assert getattr(sts, name) is getattr(torch_struct, name)
