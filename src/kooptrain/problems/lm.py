"""Next-token prediction on a real text corpus that ships with Python: its standard library.

The corpus is the top-level ``*.py`` files of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), read as bytes, in sorted order. Every tenth document
(sorted by name) is validation; the rest is training, so the two splits share no document.
Tokens are bytes (a vocabulary of 256). ``corpus_info`` gives the content hash and the sizes
that a results file records, since another Python version ships other sources.

The model is a decoder-only transformer: token and position embeddings, pre-norm blocks of
causal self-attention (``scaled_dot_product_attention``) and a GELU MLP, a final LayerNorm and
a linear head. No Koopman knowledge here.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["Block", "LanguageModelProblem", "TinyGPT", "stdlib_corpus"]


def stdlib_corpus(root: str | None = None, val_every: int = 10) -> dict:
    """``{"train": uint8 (n,), "val": uint8 (n_val,), "info": {...}}`` from the ``*.py`` files
    directly in ``root`` (default: this interpreter's standard library). Documents are joined
    with a NUL byte; ``info`` holds the sha256 of the files' names and contents, the number of
    documents and bytes per split, and the root."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(base.glob("*.py"))
    if len(files) < val_every:
        raise FileNotFoundError(
            f"found {len(files)} *.py files in {base}; the lm task needs a Python standard "
            f"library with at least {val_every} (pass root= to point at another folder).")
    digest, parts = hashlib.sha256(), {"train": [], "val": []}
    for i, f in enumerate(files):
        data = f.read_bytes()
        digest.update(f.name.encode() + b"\0" + data)
        parts["val" if i % val_every == val_every - 1 else "train"].append(data)
    out = {}
    for split, docs in parts.items():
        joined = b"\0".join(docs)
        out[split] = torch.frombuffer(bytearray(joined), dtype=torch.uint8).clone()
    out["info"] = {"root": str(base), "sha256": digest.hexdigest(), "documents": len(files),
                   "train_documents": len(parts["train"]), "val_documents": len(parts["val"]),
                   "train_bytes": len(out["train"]), "val_bytes": len(out["val"])}
    return out


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, T, d)`` -> ``(B, T, d)``."""
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, d // self.heads).unbind(2)
        a = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Byte-level decoder: ``(B, T)`` int64 tokens -> ``(B, T, vocab)`` logits."""

    def __init__(self, vocab: int = 256, d: int = 64, heads: int = 4, blocks: int = 4,
                 context: int = 64):
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} must be a multiple of heads={heads}.")
        self.context = context
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(blocks)))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)
        for m in self.modules():  # GPT-2's initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.context:
            raise ValueError(f"sequence length {T} exceeds the context {self.context}.")
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        return self.head(self.ln(self.blocks(x)))


@dataclass
class LanguageModelProblem:
    """Task = TinyGPT + next-token cross-entropy (nats per token) + the stdlib corpus.

    ``batch(gen)`` draws ``batch_size`` random windows of ``context + 1`` bytes from the
    training split. The held-out score is the loss on ``n_eval`` fixed validation windows;
    the training score uses as many fixed training windows.
    """

    d: int = 64
    heads: int = 4
    blocks: int = 4
    context: int = 64
    batch_size: int = 16
    n_eval: int = 64
    root: str | None = None
    name: str = "lm"

    def __post_init__(self):
        corpus = stdlib_corpus(self.root)
        self.train_tokens, self.val_tokens = corpus["train"], corpus["val"]
        self.info = corpus["info"]
        g = torch.Generator().manual_seed(4242)
        self.val_batch = self._windows(self.val_tokens, self.n_eval, g)
        self.train_eval_batch = self._windows(self.train_tokens, self.n_eval, g)

    def _windows(self, tokens: torch.Tensor, n: int, g: torch.Generator):
        start = torch.randint(0, len(tokens) - self.context - 1, (n,), generator=g)
        w = torch.stack([tokens[s : s + self.context + 1] for s in start.tolist()]).long()
        return w[:, :-1], w[:, 1:]

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return TinyGPT(256, self.d, self.heads, self.blocks, self.context)

    def batch(self, generator: torch.Generator):
        return self._windows(self.train_tokens, self.batch_size, generator)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())

    @torch.no_grad()
    def eval_loss(self, model: nn.Module) -> float:
        """Validation loss in nats per token."""
        return float(self.loss(model, self.val_batch))

    @torch.no_grad()
    def train_loss(self, model: nn.Module) -> float:
        return float(self.loss(model, self.train_eval_batch))
