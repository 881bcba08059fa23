"""Partition tests: exact round trips and block structure. No optimizer needed."""

import pytest
import torch
from torch import nn

from kooptrain import Partition


def mlp():
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3, bias=False),
        nn.Flatten(), nn.Linear(3 * 2 * 2, 2),
    )


MODELS = {"mlp": mlp, "cnn": cnn}
GRANS = [("weight", None), ("quasi-node", 1), ("quasi-node", 3), ("quasi-node", 100),
         ("node", None), ("layer", None), ("network", None)]


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("gran,chunk", GRANS)
def test_round_trip_is_exact_and_blocks_cover_every_scalar_once(make, gran, chunk):
    model = make()
    part = Partition(model, gran, chunk)
    vec = part.flatten()
    p = sum(p.numel() for p in model.parameters())
    assert vec.shape == (p,) == (part.n_params,)
    allidx = torch.cat([g.index.reshape(-1) for g in part.groups])
    assert torch.equal(allidx.sort().values, torch.arange(p))  # a permutation of 0..p-1
    assert all(g.index.shape == (g.n_blocks, g.size) for g in part.groups)
    assert len({g.size for g in part.groups}) == len(part.groups)  # grouped by size
    blocks = part.gather(vec)
    assert torch.equal(part.scatter(blocks), vec)
    back = part.unflatten(part.scatter(blocks))
    for name, prm in model.named_parameters():
        assert torch.equal(back[name], prm.detach())
        assert back[name].dtype == prm.dtype
    # load_state_dict with the round-tripped tensors leaves the model unchanged
    before = [q.detach().clone() for q in model.parameters()]
    model.load_state_dict(back, strict=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_node_blocks_are_rows_plus_bias_like_the_paper():
    """HNN-sized net 1->10->10->2: 10 nodes of 2, 10 of 11 and 2 of 11 (PAPER.md)."""
    model = nn.Sequential(nn.Linear(1, 10), nn.Linear(10, 10), nn.Linear(10, 2))
    part = Partition(model, "node")
    assert [(g.size, g.n_blocks) for g in part.groups] == [(2, 10), (11, 12)]
    vec = part.flatten()
    g11 = part.groups[1]
    node0 = vec[g11.index[0]]
    lin = model[1]
    assert torch.equal(node0, torch.cat([lin.weight[0], lin.bias[:1]]).detach())
    assert g11.layers[:10] == ("1",) * 10 and g11.layers[10:] == ("2", "2")


def test_conv_nodes_are_output_channels_and_norm_nodes_pair_scale_and_shift():
    model = cnn()
    part = Partition(model, "node")
    sizes = {g.size: g.n_blocks for g in part.groups}
    assert sizes[2 * 9 + 1] == 4  # conv1: 4 channels of (2*3*3 weights + bias)
    assert sizes[2] == 4  # batchnorm: (weight[c], bias[c]) per channel
    assert sizes[4 * 9] == 3  # conv2 without bias: channel rows alone
    assert sizes[13] == 2  # linear 12 -> 2
    vec = part.flatten()
    g = next(g for g in part.groups if g.size == 19)
    conv = model[0]
    assert torch.equal(vec[g.index[1]], torch.cat([conv.weight[1].reshape(-1), conv.bias[1:2]]))


def test_quasi_node_chunks_with_remainder():
    part = Partition(nn.Linear(6, 2), "quasi-node", chunk=3)  # nodes of 7 -> 3, 3, 1
    assert [(g.size, g.n_blocks) for g in part.groups] == [(1, 2), (3, 4)]


def test_free_parameters_and_embeddings_follow_documented_fallback():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.scale = nn.Parameter(torch.ones(4))
            self.lin = nn.Linear(3, 2)

    part = Partition(M(), "node")
    # embedding rows (5 blocks of 3); the free vector as one block of 4 and the
    # linear layer's 2 nodes of 3+1=4 share the size-4 group
    assert [(g.size, g.n_blocks) for g in part.groups] == [(3, 5), (4, 3)]
    g4 = part.groups[1]
    assert sorted(g4.layers) == ["", "lin", "lin"]


def test_tied_parameters_counted_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    part = Partition(model, "node")
    assert part.n_params == 20
    assert torch.equal(part.scatter(part.gather(part.flatten())), part.flatten())


def test_network_granularity_is_one_block():
    part = Partition(mlp(), "network")
    assert len(part.groups) == 1 and part.groups[0].index.shape == (1, part.n_params)
