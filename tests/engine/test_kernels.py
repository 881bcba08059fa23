"""The batched kernels on hand-built inputs: stabilisation of every kind of block in one
batch, and counts that add up over cache-sized chunks."""

import numpy as np
import pytest
import torch

from kooptrain import KoopmanOperator, _linalg


def test_stabilize_treats_each_block_on_its_own():
    """One batch: a stable block with dependent eigenvectors (left exactly as it is), an
    unstable block with a good eigenbasis (clipped onto the unit circle), and two unstable
    blocks with dependent eigenvectors (each scaled by its own spectral radius)."""
    c = torch.complex128
    bad = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=c)   # singular: no eigenbasis
    K = torch.tensor([[[0.5, 1.0], [0.0, 0.5]],     # stable (Jordan): stays
                      [[2.0, 0.0], [0.0, 0.5]],     # unstable, diagonalisable: clipped
                      [[1.5, 1.0], [0.0, 1.5]],     # unstable, defective: K / 1.5
                      [[3.0, 1.0], [0.0, 3.0]]],    # unstable, defective: K / 3
                     dtype=torch.float64)
    lam = torch.tensor([[0.5, 0.5], [2.0, 0.5], [1.5, 1.5], [3.0, 3.0]], dtype=c)
    Y = torch.stack([bad, torch.eye(2, dtype=c), bad, bad])
    Kn, lamn = _linalg.stabilize_spectrum(K, lam, Y, "clip")
    assert torch.equal(Kn[0], K[0]) and torch.equal(lamn[0], lam[0])
    torch.testing.assert_close(Kn[1], torch.diag(torch.tensor([1.0, 0.5], dtype=Kn.dtype)))
    torch.testing.assert_close(lamn[1], torch.tensor([1.0, 0.5], dtype=c))
    torch.testing.assert_close(Kn[2], K[2] / 1.5)
    torch.testing.assert_close(Kn[3], K[3] / 3.0)
    torch.testing.assert_close(lamn[2:], lam[2:] / torch.tensor([[1.5], [3.0]], dtype=c))
    Kd, lamd = _linalg.stabilize_spectrum(K, lam, Y, "drop")
    torch.testing.assert_close(Kd[1], torch.diag(torch.tensor([0.0, 0.5], dtype=Kd.dtype)))
    torch.testing.assert_close(Kd[2], K[2] / 1.5)  # no eigenbasis: scaled, not dropped


def test_refined_blocks_are_counted_over_every_chunk(rng, monkeypatch):
    """Training-like windows spread over several cache-sized chunks: the count is the total,
    and equals the one-chunk count."""
    B, d, m = 12, 12, 60
    X = rng.standard_normal((B, d, 1)) + np.cumsum(1e-3 * rng.standard_normal((B, d, m)), -1)
    whole = KoopmanOperator().fit(X)
    assert whole.refined_blocks_ >= 2
    monkeypatch.setattr(_linalg, "CPU_CHUNK_BYTES", 8 * d * (2 * (m - 1) + 4 * d) * 2)
    chunked = KoopmanOperator().fit(X)  # 2 blocks per chunk
    assert chunked.refined_blocks_ == whole.refined_blocks_
    torch.testing.assert_close(chunked.operator, whole.operator)


def test_tall_qr_is_the_thin_qr_of_a_tall_block_in_place():
    """TSQR (row chunks, then the stacked R factors) gives LAPACK's thin QR up to the
    signs of its columns: an orthonormal Q written over the block, an upper-triangular R
    with the same |diagonal| (where the block has full rank) and the block's singular
    values, and Q R = X; a block shorter than a chunk too."""
    g = torch.Generator().manual_seed(0)
    d = _linalg.TSQR_MIN_ROWS + 123  # chunks of unequal length
    X = torch.randn(2, d, 6, generator=g, dtype=torch.float64)
    X[1, :, 3] = X[1, :, 1]  # rank 5 of 6 in the second block
    for rows in (5000, 2 * d):  # 13 chunks; one chunk
        Q = X.clone()
        R = _linalg.tall_qr_(Q, rows=rows)
        assert R.shape == (2, 6, 6)
        torch.testing.assert_close(R, R.triu(), rtol=0, atol=0)
        eye = torch.eye(6, dtype=torch.float64).expand(2, 6, 6)
        torch.testing.assert_close(Q.mT @ Q, eye, rtol=0, atol=1e-12)
        torch.testing.assert_close(Q @ R, X, rtol=0, atol=1e-11)
        R_ref = torch.linalg.qr(X[0])[1]  # unique up to signs where X has full rank
        torch.testing.assert_close(R[0].diagonal().abs(), R_ref.diagonal().abs(),
                                   rtol=1e-10, atol=0)
        S = torch.linalg.svdvals(X)
        torch.testing.assert_close(torch.linalg.svdvals(R), S, rtol=1e-10,
                                   atol=1e-12 * float(S.max()))
    with pytest.raises(ValueError, match="d >= k"):
        _linalg.tall_qr_(torch.zeros(3, 5, dtype=torch.float64))


def test_a_tall_fit_is_exact_dmd_in_a_basis_of_its_window():
    """A block tall enough to be fitted in a basis of itself acts as the pseudo-inverse
    operator does, rank deficiency included (a repeated column is dropped, as by LAPACK's
    SVD), at one step and at a long horizon."""
    g = torch.Generator().manual_seed(1)
    d = _linalg.TSQR_MIN_ROWS + 7
    assert _linalg.is_tall(d, 6)
    X = torch.randn(2, d, 6, generator=g, dtype=torch.float64)
    X[1, :, 3] = X[1, :, 1]
    X0, X1 = X[..., :-1], X[..., 1:]
    op = KoopmanOperator().fit(X)
    assert "basis of the window" in op.representation_.describe()
    Wr, Sr, Vhr = torch.linalg.svd(X0, full_matrices=False)
    keep = Sr > 1e-6 * Sr[..., :1]
    assert int(keep[1].sum()) == 4
    inv = torch.where(keep, 1 / Sr, torch.zeros_like(Sr))
    B, W = X1 @ Vhr.mT * inv.unsqueeze(-2), Wr * keep.unsqueeze(-2)
    x = X[..., -1:]
    ref1 = B @ (W.mT @ x)
    K = W.mT @ B
    ref40 = B @ (torch.linalg.matrix_power(K, 39) @ (W.mT @ x))
    for T, ref in ((1, ref1), (40, ref40)):
        torch.testing.assert_close(op.predict(T), ref.squeeze(-1), rtol=1e-9,
                                   atol=1e-9 * ref.abs().max())
    lam_ref = torch.linalg.eigvals(K).abs().sort(-1).values
    torch.testing.assert_close(op.eigenvalues.abs().sort(-1).values, lam_ref, rtol=1e-9,
                               atol=1e-12)


def test_copy_false_lets_a_tall_fit_use_a_float64_window_and_nothing_else():
    """``copy=True`` (the default) never writes to the window; ``copy=False`` overwrites a
    float64 one with its orthonormal basis, and the fit is the same; a float32 window is
    copied either way."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(1, _linalg.TSQR_MIN_ROWS, 5, generator=g, dtype=torch.float64)
    keep = X.clone()
    a = KoopmanOperator().fit(X).predict(3)
    torch.testing.assert_close(X, keep, rtol=0, atol=0)
    X32 = X.float()
    keep32 = X32.clone()
    KoopmanOperator().fit(X32, copy=False)
    torch.testing.assert_close(X32, keep32, rtol=0, atol=0)
    b = KoopmanOperator().fit(X, copy=False).predict(3)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(X.mT @ X, torch.eye(5, dtype=torch.float64)[None], rtol=0,
                               atol=1e-12)
