"""The batched kernels on hand-built inputs: stabilisation of every kind of block in one
batch, and counts that add up over cache-sized chunks."""

import numpy as np
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


def test_tall_svd_is_the_thin_svd_of_a_tall_block():
    """TSQR (row chunks, then the stacked R factors) gives LAPACK's thin SVD: the same
    singular values, an orthonormal W, the same reconstruction; and the exact-DMD factors
    of a block tall enough to take it act as the LAPACK route's do, rank deficiency
    included (a column repeated)."""
    g = torch.Generator().manual_seed(0)
    d = _linalg.TSQR_MIN_ROWS + 123  # chunks of unequal length
    X = torch.randn(2, d, 6, generator=g, dtype=torch.float64)
    X[1, :, 3] = X[1, :, 1]  # rank 5 of 6 in the second block
    X0, X1 = X[..., :-1], X[..., 1:]
    W, S, Vh = _linalg.tall_svd(X0, rows=5000)
    S_ref = torch.linalg.svdvals(X0)
    torch.testing.assert_close(S, S_ref, rtol=1e-12, atol=1e-12 * S_ref.max())
    eye = torch.eye(5, dtype=torch.float64).expand(2, 5, 5)
    torch.testing.assert_close(W.mT @ W, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close((W * S.unsqueeze(-2)) @ Vh, X0, rtol=0, atol=1e-11)
    B, Wk = _linalg.svd_operator(X0, X1, None, 1e-6)  # takes the TSQR route here
    assert B.shape == Wk.shape == (2, d, 5)
    x = torch.randn(2, d, 1, generator=g, dtype=torch.float64)
    Wr, Sr, Vhr = torch.linalg.svd(X0, full_matrices=False)
    keep = Sr > 1e-6 * Sr[..., :1]
    inv = torch.where(keep, 1 / Sr, torch.zeros_like(Sr))
    ref = (X1 @ Vhr.mT * inv.unsqueeze(-2)) @ ((Wr * keep.unsqueeze(-2)).mT @ x)
    torch.testing.assert_close(B @ (Wk.mT @ x), ref, rtol=1e-9, atol=1e-9 * ref.abs().max())
    assert int(keep[1].sum()) == 4  # the repeated column was dropped, as by LAPACK
