"""genbmm's banded matrices (``BandedMatrix``, ``banddiag``): its layout, its band operations and
its three semiring products, differentiable, on any device.

Layout (genbmm's): ``data`` (batch, n, lu + ld + 1) stores a batch of n × n matrices by columns:
``data[b, c, j]`` is entry (row c + j − lu, column c), so column c keeps rows c − lu .. c + ld;
everything else is ``fill`` (``to_dense``). Slots whose row falls outside 0..n-1 are padding.

torch-struct tests ``isinstance(a, genbmm.BandedMatrix)`` in its semirings' ``matmul`` whenever
``import genbmm`` succeeds, and its ``Alignment`` is built on these matrices, so a genbmm
stand-in needs them. Products run on gathered (batch, n, width_out, width_in) terms: O(n · widths)
memory, not the n × n dense matrix, with autograd through the gather.
"""

from __future__ import annotations

import torch

from .semirings import logsumexp

__all__ = ["BandedMatrix", "banddiag"]


def banddiag(x: torch.Tensor, lu: int, ld: int, fill=0):
    """(band, dense): the band (..., n, lu + ld + 1) of the square matrices x (..., n, n) in
    BandedMatrix's layout, and a dense copy of x; both are views of one padded buffer, so
    writing into the band writes the dense copy (``fill``: ignored, as in genbmm)."""
    n = x.shape[-2]
    pad_shape = list(x.shape)
    pad_shape[-2] = lu + n + ld
    padded = x.new_zeros(pad_shape)
    dense = padded.narrow(-2, lu, n)
    dense.copy_(x)
    # window c of lu + ld + 1 padded rows starting at row c, read in column c
    windows = padded.unfold(-2, lu + ld + 1, 1)  # (..., n, n cols, width)
    band = torch.diagonal(windows, 0, -3, -2).transpose(-2, -1)  # (..., n, width)
    return band, dense


class BandedMatrix:
    """A batch of banded n × n matrices in genbmm's layout (module docstring)."""

    def __init__(self, data: torch.Tensor, lu: int, ld: int, fill=0):
        if not isinstance(data, torch.Tensor) or data.dim() != 3:
            raise ValueError(f"data must be a (batch, n, lu + ld + 1) tensor, got {getattr(data, 'shape', type(data))}")
        if data.shape[-1] != lu + ld + 1:  # (lu or ld may go negative under col_shift, as in genbmm)
            raise ValueError(f"data's last dim must be lu + ld + 1 = {lu + ld + 1} (lu={lu}, ld={ld}), got {tuple(data.shape)}")
        self.data, self.lu, self.ld, self.fill = data, int(lu), int(ld), fill
        self.width = self.lu + self.ld + 1

    def __repr__(self):
        return f"BandedMatrix(batch={self.data.shape[0]}, n={self.data.shape[1]}, lu={self.lu}, ld={self.ld}, fill={self.fill})"

    # -- band bookkeeping (data-level moves, genbmm's definitions) -----------------------------
    def _pad(self, k: int, dim: int, value=None) -> torch.Tensor:
        """k slots (dim 2) or columns (dim 1) of ``value`` (default: fill)."""
        shape = list(self.data.shape)
        shape[dim] = k
        return self.data.new_full(shape, self.fill if value is None else value)

    def band_shift(self, t: int) -> "BandedMatrix":
        """Drop the first t band slots and pad t at the end (t < 0: the reverse); (lu + t, ld − t)."""
        if t == 0:
            return self
        if t > 0:
            data = torch.cat([self.data[:, :, t:], self._pad(t, 2)], 2)
        else:
            data = torch.cat([self._pad(-t, 2), self.data[:, :, :t]], 2)
        return BandedMatrix(data, self.lu + t, self.ld - t, self.fill)

    def band_unshift(self) -> "BandedMatrix":
        """One fill slot in front, the last slot dropped; (lu − 1, ld + 1)."""
        return BandedMatrix(torch.cat([self._pad(1, 2), self.data[:, :, :-1]], 2), self.lu - 1, self.ld + 1, self.fill)

    def band_pad(self, t: int) -> "BandedMatrix":
        """t fill slots on both sides; (lu + t, ld + t)."""
        if t == 0:
            return self
        return BandedMatrix(torch.cat([self._pad(t, 2), self.data, self._pad(t, 2)], 2), self.lu + t, self.ld + t, self.fill)

    def col_shift(self, t: int) -> "BandedMatrix":
        """Drop the first t columns and pad t fill columns at the end (t < 0: the reverse); (lu − t, ld + t)."""
        if t == 0:
            return self
        if t > 0:
            data = torch.cat([self.data[:, t:], self._pad(t, 1)], 1)
        else:
            data = torch.cat([self._pad(-t, 1), self.data[:, :t]], 1)
        return BandedMatrix(data, self.lu - t, self.ld + t, self.fill)

    def col_unshift(self) -> "BandedMatrix":
        """One fill column in front, the last column dropped; (lu + 1, ld − 1)."""
        return BandedMatrix(torch.cat([self._pad(1, 1), self.data[:, :-1]], 1), self.lu + 1, self.ld - 1, self.fill)

    def _expand(self, lu: int, ld: int, value=None) -> "BandedMatrix":
        """The same matrix with a wider band (lu, ld) ≥ (self.lu, self.ld), new slots ``value`` (default: fill)."""
        data = torch.cat([self._pad(lu - self.lu, 2, value), self.data, self._pad(ld - self.ld, 2, value)], 2)
        return BandedMatrix(data, lu, ld, self.fill)

    def op(self, other: "BandedMatrix", op, zero=0) -> "BandedMatrix":
        """Elementwise ``op(self, other)`` on the union of the bands; slots only self has keep its
        value, slots neither has are ``zero`` (genbmm's definition)."""
        lu, ld = max(self.lu, other.lu), max(self.ld, other.ld)
        mine = self._expand(lu, ld, zero).data
        s2 = lu - other.lu
        combined = op(mine[:, :, s2:s2 + other.width], other.data)
        data = torch.cat([mine[:, :, :s2], combined, mine[:, :, s2 + other.width:]], 2)
        return BandedMatrix(data, lu, ld, self.fill)

    # -- dense view and transpose ----------------------------------------------------------------
    def _rows(self, lu: int, width: int):
        """(row index (n, width) of every slot, whether it lies inside the matrix)."""
        n = self.data.shape[1]
        rows = torch.arange(n, device=self.data.device)[:, None] + torch.arange(width, device=self.data.device) - lu
        return rows, (rows >= 0) & (rows < n)

    def to_dense(self) -> torch.Tensor:
        """(batch, n, n), ``fill`` outside the band."""
        batch, n, _ = self.data.shape
        rows, inside = self._rows(self.lu, self.width)
        cols = torch.arange(n, device=self.data.device)[:, None].expand_as(rows)
        flat = (rows * n + cols)[inside]  # row-major index of each slot inside the matrix
        dense = self.data.new_full((batch, n * n), self.fill)
        return dense.index_put((torch.arange(batch, device=dense.device)[:, None], flat[None]),
                               self.data[:, inside]).view(batch, n, n)

    def transpose(self) -> "BandedMatrix":
        """The transposed matrices, band (ld, lu); padding slots are ``fill``."""
        rows, inside = self._rows(self.ld, self.width)  # column c of the transpose = row c of self
        src = rows.clamp(0, self.data.shape[1] - 1) * self.width + (self.width - 1 - torch.arange(self.width, device=rows.device))
        data = self.data.flatten(1)[:, src.flatten()].view_as(self.data)
        data = torch.where(inside, data, torch.as_tensor(self.fill, dtype=data.dtype, device=data.device))
        return BandedMatrix(data, self.ld, self.lu, self.fill)

    # -- semiring products -------------------------------------------------------------------------
    def _product(self, other: "BandedMatrix", times, plus, zero: float) -> "BandedMatrix":
        """genbmm's product: with dense A = self, B = other, out[o, i] = ⊕_p A[p, i] ⊗ B[p, o]
        (Bᵀ A; torch-struct's ``matmul(a, b)`` is ``b.multiply(a.transpose())``), band
        (self.lu + other.ld, self.ld + other.lu). An entry with no term is 0̄ (−inf, or 0 for
        the plain product); padding slots are ``fill``."""
        if not isinstance(other, BandedMatrix) or other.data.shape[:2] != self.data.shape[:2]:
            raise ValueError(f"other must be a BandedMatrix of the same batch and n, got {other!r} for {self!r}")
        batch, n, wa = self.data.shape
        lu, ld = self.lu + other.ld, self.ld + other.lu
        dev = self.data.device
        i = torch.arange(n, device=dev)[:, None, None]
        j = torch.arange(lu + ld + 1, device=dev)[None, :, None]
        k = torch.arange(wa, device=dev)[None, None, :]
        o, p = i + j - lu, i + k - self.lu  # out column o (= B's column), summed row p
        k2 = p - o + other.lu  # p's slot in B's column o
        ok = (o >= 0) & (o < n) & (p >= 0) & (p < n) & (k2 >= 0) & (k2 < other.width)
        src = (o.clamp(0, n - 1) * other.width + k2.clamp(0, other.width - 1)).expand(n, lu + ld + 1, wa)
        b_terms = other.data.flatten(1)[:, src.flatten()].view(batch, n, lu + ld + 1, wa)
        terms = times(self.data.unsqueeze(2), b_terms)
        terms = torch.where(ok, terms, torch.as_tensor(zero, dtype=terms.dtype, device=dev))
        out = plus(terms)
        _, inside = self._rows(lu, lu + ld + 1)  # o inside the matrix
        out = torch.where(inside, out, torch.as_tensor(self.fill, dtype=out.dtype, device=dev))
        return BandedMatrix(out, lu, ld, self.fill)

    def multiply(self, other: "BandedMatrix") -> "BandedMatrix":
        """Sum-product (see ``_product``)."""
        return self._product(other, torch.mul, lambda t: t.sum(-1), 0.0)

    def multiply_log(self, other: "BandedMatrix") -> "BandedMatrix":
        """Log-sum-exp of sums (see ``_product``); all-−inf entries are −inf with zero gradient."""
        return self._product(other, torch.add, lambda t: logsumexp(t, -1), float("-inf"))

    def multiply_max(self, other: "BandedMatrix") -> "BandedMatrix":
        """Max of sums (see ``_product``); the gradient goes to the first maximising term."""
        return self._product(other, torch.add, lambda t: t.max(-1).values, float("-inf"))

    # genbmm's pure-PyTorch fallbacks of the same products: here one implementation serves both
    multiply_simple = multiply
    multiply_log_simple = multiply_log
    multiply_max_simple = multiply_max
