"""A GRU on the adding problem (sum the two marked numbers of a sequence), raced as your own
model: ``kooptrain race examples/race_gru.py --methods ema,swa,schedulefree,koopman``."""
import torch
from torch.nn import functional as F

from kooptrain.experiments import PlainOptimizer, Task


def adding(n, length, g):  # (n, length, 2) inputs: a value and a 0/1 mark; (n, 1) targets
    values = torch.rand(n, length, generator=g)
    picks = torch.stack([torch.randperm(length, generator=g)[:2] for _ in range(n)])
    marks = torch.zeros(n, length).scatter_(1, picks, 1.0)
    return torch.stack([values, marks], -1), (values * marks).sum(1, keepdim=True)


class GRURegressor(torch.nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.gru, self.head = torch.nn.GRU(2, hidden, batch_first=True), torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


def task(length=30):
    x_test, y_test = adding(512, length, torch.Generator().manual_seed(0))

    def batches(seed):
        g = torch.Generator().manual_seed(1000 + seed)
        while True:
            yield adding(64, length, g)

    @torch.no_grad()
    def heldout(model):
        device = next(model.parameters()).device
        return F.mse_loss(model(x_test.to(device)), y_test.to(device)).item()

    return Task("gru-adding", model=lambda seed: (torch.manual_seed(seed), GRURegressor())[1],
                batches=batches, loss=lambda model, b: F.mse_loss(model(b[0]), b[1]),
                heldout=heldout, heldout_name="test mean squared error", budget=1000,
                eval_every=20, clip=1.0,
                optimizers={"adam": PlainOptimizer(torch.optim.Adam, lr=3e-3, grid=(1e-3, 3e-3))})
