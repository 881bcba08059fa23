"""What a practitioner would try instead of Koopman jumps: Lookahead, EMA, SWA.

Lookahead (Zhang et al. 2019) is written here in a few lines rather than taken
from timm, which pulls torchvision. EMA and SWA come from ``torch.optim.swa_utils``;
LAWA is ``KoopmanAccelerator(predictor="average")``; Schedule-Free AdamW comes
from the ``schedulefree`` package.
"""

from __future__ import annotations

import torch

__all__ = ["Lookahead"]


class Lookahead(torch.optim.Optimizer):
    """Every ``k`` steps of ``base``: ``slow += alpha (fast - slow)``; ``fast = slow``.

    Shares ``base.param_groups`` and ``base.state``; keeps the slow weights in its
    own ``slow`` list.

    Example
    -------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=2, alpha=0.5)
    >>> for _ in range(2):
    ...     opt.zero_grad(); (-p.sum()).backward(); opt.step()
    >>> [round(v, 6) for v in p.tolist()]  # fast went to 0.2; halfway back to the slow 0
    [0.1, 0.1]
    """

    def __init__(self, base: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be a positive int.")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha={alpha!r} must lie in (0, 1].")
        self.base, self.k, self.alpha, self._count = base, k, alpha, 0
        self.param_groups, self.state, self.defaults = base.param_groups, base.state, base.defaults
        self.slow = [[p.detach().clone() for p in g["params"]] for g in base.param_groups]

    def step(self, closure=None):
        loss = self.base.step(closure)
        self._count += 1
        if self._count % self.k == 0:
            with torch.no_grad():
                for group, slow in zip(self.param_groups, self.slow, strict=True):
                    for p, s in zip(group["params"], slow, strict=True):
                        s.add_(p - s, alpha=self.alpha)
                        p.copy_(s)
        return loss

    def zero_grad(self, set_to_none: bool = True):
        self.base.zero_grad(set_to_none)

    def state_dict(self):
        return {"base": self.base.state_dict(), "slow": self.slow, "count": self._count}

    def load_state_dict(self, state):
        self.base.load_state_dict(state["base"])
        self.slow, self._count = state["slow"], state["count"]
