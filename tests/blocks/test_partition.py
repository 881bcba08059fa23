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
    part = Partition(model, granularity=gran, chunk=chunk)
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
    part = Partition(model, granularity="node")
    assert [(g.size, g.n_blocks) for g in part.groups] == [(2, 10), (11, 12)]
    vec = part.flatten()
    g11 = part.groups[1]
    node0 = vec[g11.index[0]]
    lin = model[1]
    assert torch.equal(node0, torch.cat([lin.weight[0], lin.bias[:1]]).detach())
    assert g11.layers[:10] == ("1",) * 10 and g11.layers[10:] == ("2", "2")


def test_conv_nodes_are_output_channels_and_norm_nodes_pair_scale_and_shift():
    model = cnn()
    part = Partition(model, granularity="node")
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
    part = Partition(nn.Linear(6, 2), granularity="quasi-node", chunk=3)  # nodes of 7 -> 3, 3, 1
    assert [(g.size, g.n_blocks) for g in part.groups] == [(1, 2), (3, 4)]


def test_free_parameters_and_embeddings_follow_documented_fallback():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.scale = nn.Parameter(torch.ones(4))
            self.lin = nn.Linear(3, 2)

    part = Partition(M(), granularity="node")
    # embedding rows (5 blocks of 3); the free vector as one block of 4 and the
    # linear layer's 2 nodes of 3+1=4 share the size-4 group
    assert [(g.size, g.n_blocks) for g in part.groups] == [(3, 5), (4, 3)]
    g4 = part.groups[1]
    assert sorted(g4.layers) == ["", "lin", "lin"]


def test_tied_parameters_counted_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    part = Partition(model, granularity="node")
    assert part.n_params == 20
    assert torch.equal(part.scatter(part.gather(part.flatten())), part.flatten())


def test_network_granularity_is_one_block():
    part = Partition(mlp(), granularity="network")
    assert len(part.groups) == 1 and part.groups[0].index.shape == (1, part.n_params)


class Odd(nn.Module):
    """Parameters without node structure: free 1-D and 2-D tensors, an embedding, a norm."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.randn(4))        # 1-D, unpaired: one block
        self.table = nn.Parameter(torch.randn(1, 5))     # 2-D with one row
        self.emb = nn.Embedding(3, 2)                    # split along dim 0
        self.norm = nn.LayerNorm(2)                      # (weight[c], bias[c]) pairs


@pytest.mark.parametrize("gran,chunk", GRANS)
def test_round_trip_on_parameters_without_node_structure(gran, chunk):
    model = Odd()
    part = Partition(model, granularity=gran, chunk=chunk)
    vec = torch.randn(part.n_params)
    back = part.unflatten(part.scatter(part.gather(vec)))
    assert torch.equal(part.flatten(back), vec)
    allidx = torch.cat([g.index.reshape(-1) for g in part.groups])
    assert torch.equal(allidx.sort().values, torch.arange(part.n_params))
    if gran == "node":
        sizes = sorted((g.size, g.n_blocks) for g in part.groups)
        # lin: 2 nodes of 4; scale: one block of 4; table: 1 row of 5; emb: 3 rows of 2;
        # norm: 2 pairs (weight[c], bias[c])
        assert sizes == [(2, 5), (4, 3), (5, 1)]


def test_tied_parameters_are_counted_once():
    a = nn.Linear(4, 4)
    model = nn.Sequential(a, nn.Tanh(), a)
    part = Partition(model, granularity="node")
    assert part.n_params == 20 and part.n_blocks == 4
    assert part.model is model


def test_frozen_parameters_are_left_out_even_when_their_partner_trains():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    part = Partition(model, granularity="node")
    assert part.names == ["0.bias", "1.weight", "1.bias"]
    assert sorted((g.size, g.n_blocks) for g in part.groups) == [(2, 1), (3, 2)]


def test_mixed_dtypes_promote_and_come_back_in_their_own_dtype():
    model = nn.Sequential(nn.Linear(2, 2).double(), nn.Linear(2, 2), nn.Linear(2, 1).half())
    part = Partition(model)
    assert part.dtype == torch.float64
    back = part.unflatten(part.flatten())
    assert [back[n].dtype for n in part.names] == [torch.float64] * 2 + [torch.float32] * 2 \
        + [torch.float16] * 2
    m2 = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    assert Partition(m2).dtype == torch.float64


def test_block_layer_labels():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert Partition(model, granularity="weight").groups[0].layers == ("",) * 26
    assert Partition(model, granularity="network").groups[0].layers == ("",)
    # groups are sorted by size: layer "1" has 10 parameters, layer "0" has 16
    assert [g.layers for g in Partition(model, granularity="layer").groups] == [("1",), ("0",)]
    q = Partition(model, granularity="quasi-node", chunk=2)
    assert [g.size for g in q.groups] == [1, 2]  # 4 = 2+2 and 5 = 2+2+1
    q = Partition(model, granularity="quasi-node", chunk=3)
    sizes = {g.size: g.layers for g in q.groups}
    assert sorted(sizes) == [1, 2, 3]  # no empty remainder blocks
    assert sizes[1] == ("0",) * 4 and set(sizes[2]) == {"1"}


def test_move_errors_say_what_is_wrong():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    part = Partition(model, granularity="node")
    with pytest.raises(ValueError, match="last axis of 26 parameters, got \\(25,\\)"):
        part.gather(torch.zeros(25))
    with pytest.raises(ValueError, match="expected 2 block tensors, got 1"):
        part.scatter(part.gather(torch.zeros(26))[:1])
    with pytest.raises(ValueError, match="shape \\(4, 3\\) does not match"):
        part.scatter([torch.zeros(4, 3), torch.zeros(2, 5)])
    with pytest.raises(KeyError, match="params lacks \\['0.weight'\\]"):
        part.flatten({n: p for n, p in model.named_parameters() if n != "0.weight"})
    with pytest.raises(KeyError, match="'1.weight'\\]\\.\\.\\."):
        part.flatten({})
    with pytest.raises(KeyError, match="'1.bias'\\]") as e:
        part.flatten({"0.weight": model[0].weight})
    assert "..." not in str(e.value)  # exactly three missing: all listed
    with pytest.raises(TypeError, match="got dict"):
        Partition({"w": torch.ones(2)})
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="chunk=q"):
            Partition(model, granularity="quasi-node", chunk=bad)


def test_parameters_shared_between_modules_are_counted_once():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight, b.bias = a.weight, a.bias
    part = Partition(nn.Sequential(a, nn.Tanh(), b), granularity="node")
    assert part.n_params == 20 and part.n_blocks == 4


def test_dtype_promotion_reads_every_parameter():
    class M(nn.Module):
        def __init__(self, first, rest):
            super().__init__()
            self.p0 = nn.Parameter(torch.zeros(2, dtype=first))
            self.p1 = nn.Parameter(torch.zeros(2, dtype=rest))
            self.p2 = nn.Parameter(torch.zeros(2, dtype=torch.float16))

    assert Partition(M(torch.float64, torch.float32)).dtype == torch.float64
    assert Partition(M(torch.float32, torch.float64)).dtype == torch.float64
    assert Partition(M(torch.float16, torch.float16)).dtype == torch.float16


def test_quasi_node_full_chunks_keep_their_layer_labels():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    g3 = {g.size: g for g in Partition(model, granularity="quasi-node", chunk=3).groups}[3]
    assert g3.layers == ("0",) * 4 + ("1",) * 2


def test_repr_names_granularity_and_blocks():
    part = Partition(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), granularity="node")
    assert repr(part) == "Partition(granularity='node', params=26, blocks=[4x4, 2x5])"


def test_assign_writes_in_place_and_keeps_tied_parameters_tied():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin)  # tied: one module used twice
    part = Partition(model, granularity="node")
    ids = [id(p) for p in part.params]
    values = {n: torch.full_like(p, 0.5) for n, p in zip(part.names, part.params, strict=True)}
    part.assign(values)
    assert [id(p) for p in model.parameters()] == ids  # the same tensors, written in place
    assert all(bool((p == 0.5).all()) for p in model.parameters())
    assert model[0].weight is model[2].weight
    with pytest.raises(KeyError, match="values lacks"):
        part.assign({})
