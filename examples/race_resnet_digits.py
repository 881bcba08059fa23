"""A ResNet-8 with BatchNorm on scikit-learn's 8x8 digits, raced as your own model:
``kooptrain race examples/race_resnet_digits.py --methods ema,swa,schedulefree,koopman``."""
import functools

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

from kooptrain.experiments import PlainOptimizer, Task


class Block(nn.Module):  # conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        conv = functools.partial(nn.Conv2d, kernel_size=3, padding=1, bias=False)
        self.body = nn.Sequential(conv(c_in, c_out, stride=stride), nn.BatchNorm2d(c_out),
                                  nn.ReLU(), conv(c_out, c_out), nn.BatchNorm2d(c_out))
        self.skip = nn.Identity() if c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


def resnet8(seed):  # a stem, 3 blocks of 2 convs and a linear head: 8 weight layers
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                         nn.ReLU(), Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def task():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16, torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]

    def batches(seed):  # minibatches of 64, reshuffled every epoch
        g = torch.Generator().manual_seed(1000 + seed)
        while True:
            for i in torch.randperm(len(train), generator=g).split(64):
                yield x[train[i]], y[train[i]]

    @torch.no_grad()
    def scores(model):  # test cross-entropy and accuracy, on the model's device
        xt, yt = (t[test].to(next(model.parameters()).device) for t in (x, y))
        logits = model(xt)
        return F.cross_entropy(logits, yt).item(), (logits.argmax(1) == yt).float().mean().item()

    sgd = functools.partial(torch.optim.SGD, momentum=0.9)
    return Task("resnet8-digits", model=resnet8, batches=batches, budget=600, eval_every=20,
                loss=lambda model, b: F.cross_entropy(model(b[0]), b[1]),
                heldout=lambda model: scores(model)[0], accuracy=lambda model: scores(model)[1],
                bn_loader=lambda: [x[train[:256]], x[train[256:512]]],
                optimizers={"sgd": PlainOptimizer(sgd, lr=0.05, grid=(0.02, 0.05, 0.1)),
                            "adam": PlainOptimizer(torch.optim.Adam, lr=3e-3, grid=(1e-3, 3e-3))},
                heldout_name="test cross-entropy")
