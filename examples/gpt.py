"""A baby GPT-2: a character-level causal transformer trained as GPT models are trained.

    python examples/gpt.py                          # xpnet (auto backend), then PyTorch
    python examples/gpt.py --iters 2000             # longer
    python examples/gpt.py --backend torch --no-reference --threads 2

Data: the text ``char_lm.py`` uses, the Python standard library's own top-level modules
(every machine with Python has them); the last tenth of the files, by name, is held
out. One token per character (printable ASCII, newline, tab, one for anything else: 98).

Model (``xn.models.gpt``): token embedding and learned positions, 4 pre-norm causal
transformer blocks of width 128 with 4 heads, a final LayerNorm and an output head tied
to the token embedding; GPT-2's initialisation (N(0, 0.02), the residual projections
scaled by 1/sqrt(2 * layers)), dropout 0.1 on the embeddings, the attention weights and
both residual branches. Training as nanoGPT's: random windows of 64 characters, 12 per
batch (``xn.data.windows``), AdamW with betas (0.9, 0.99), weight decay 0.1 on the
matrices only (``xn.optim.decay_groups``), a linear warmup into cosine decay to a tenth
of the peak rate, gradients clipped to norm 1.0.

It prints the held-out loss (nats per character, and bits) on non-overlapping windows of
the held-out text, a sample (``xn.generate``: cached keys and values, temperature 0.8,
top-k 20), and then, where torch is installed, trains the same model in PyTorch from the
same initial weights on the same batches (its own dropout masks, so the runs differ by
more than rounding) and prints its held-out loss beside xpnet's.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys
import time

import numpy as np

import xpnet as xn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from char_lm import VOCAB, decode, encode, stdlib_text  # noqa: E402  (the same text)


def build(args) -> xn.Sequential:
    return xn.models.gpt(VOCAB, context=args.context, width=args.width, heads=args.heads,
                         layers=args.layers, dropout=args.dropout)


def schedule(args) -> xn.WarmupCosineLR:
    return xn.WarmupCosineLR(args.lr, warmup_steps=args.warmup, total_steps=args.iters,
                             min_lr=args.lr / 10)


def held_out(ids: np.ndarray, length: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of the held-out ids and their next characters."""
    n = min((len(ids) - 1) // length, count)
    return (ids[: n * length].reshape(n, length), ids[1: n * length + 1].reshape(n, length))


def train_xpnet(args, train_ids, x_val, y_val):
    """Returns (model, initial state_dict, held-out nats, seconds, last training loss)."""
    xn.seed(args.seed)
    model = build(args)
    initial = model.state_dict(tied=True)
    opt = xn.AdamW(xn.optim.decay_groups(model, args.weight_decay), lr=schedule(args),
                   betas=(0.9, 0.99))
    batches = xn.data.windows(train_ids, args.context, args.batch, seed=args.seed)
    start = time.perf_counter()
    history = xn.fit(model, batches, loss=xn.SoftmaxCrossEntropy(), optimizer=opt,
                     epochs=1, steps_per_epoch=args.iters, clip_grad_norm=1.0,
                     seed=args.seed, progress=args.progress, metrics=())
    seconds = time.perf_counter() - start
    nats = xn.evaluate(model, x_val, y_val, loss=xn.SoftmaxCrossEntropy(),
                       batch_size=256)["loss"]
    return model, initial, nats, seconds, history["loss"][-1]


def torch_names(args) -> tuple[dict[str, str], dict[str, str]]:
    """xpnet's names in ``xn.models.gpt`` (a Sequential: 0 embedding, 1 positions, 2
    dropout, the blocks, the norm, the head) -> the PyTorch model's below. Inside a block
    the names are PyTorch's already (``self_attn.in_proj_weight``, ``linear1.weight``)."""
    n = args.layers
    out = {"0.weight": "embed.weight", "1.weight": "pos", f"{3 + n}.weight": "norm.weight",
           f"{3 + n}.bias": "norm.bias", f"{4 + n}.weight": "head.weight"}
    return out, {f"{3 + i}.": f"blocks.{i}." for i in range(n)}


def train_torch(args, initial, train_ids, x_val, y_val):
    """The same model, initial weights, batches, optimizer groups, schedule and clipping
    in PyTorch eager; returns (held-out nats, seconds)."""
    import torch
    from torch import nn

    e, p = args.width, args.dropout

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.MultiheadAttention(e, args.heads, dropout=p, batch_first=True)
            self.linear1, self.linear2 = nn.Linear(e, 4 * e), nn.Linear(4 * e, e)
            self.norm1, self.norm2 = nn.LayerNorm(e), nn.LayerNorm(e)
            self.dropout1, self.dropout2 = nn.Dropout(p), nn.Dropout(p)

        def forward(self, x, allowed):
            # nn.MultiheadAttention's parameters, through scaled_dot_product_attention
            # with an explicit mask (its causal training path is many times slower on
            # CPUs with torch 2.13)
            n, length, _ = x.shape
            attn = self.self_attn
            qkv = nn.functional.linear(self.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.view(n, length, 3, args.heads, e // args.heads).permute(2, 0, 3, 1, 4)
            o = nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=p if self.training else 0.0)
            a = attn.out_proj(o.transpose(1, 2).reshape(n, length, e))
            x = x + self.dropout1(a)
            h = self.linear2(nn.functional.gelu(self.linear1(self.norm2(x))))
            return x + self.dropout2(h)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, e)
            self.pos = nn.Parameter(torch.zeros(args.context, e))
            self.drop = nn.Dropout(p)
            self.blocks = nn.ModuleList(Block() for _ in range(args.layers))
            self.norm = nn.LayerNorm(e)
            self.head = nn.Linear(e, VOCAB, bias=False)
            self.head.weight = self.embed.weight  # tied, as xpnet's Linear.tied_to
            self.register_buffer("allowed", torch.tril(torch.ones(args.context, args.context,
                                                                  dtype=torch.bool)),
                                 persistent=False)

        def forward(self, ids):
            n = ids.shape[1]
            h = self.drop(self.embed(ids) + self.pos[:n])
            for block in self.blocks:
                h = block(h, self.allowed[:n, :n])
            return self.head(self.norm(h))

    torch.manual_seed(args.seed)
    model = GPT()
    direct, blocks = torch_names(args)

    def rename(name):
        if name in direct:
            return direct[name]
        head, rest = name.split(".", 1)
        return blocks[head + "."] + rest

    model.load_state_dict({rename(k): torch.from_numpy(v) for k, v in initial.items()})
    decay = [q for q in model.parameters() if q.dim() >= 2 and q is not model.embed.weight
             and q is not model.pos]
    rest = [q for q in model.parameters() if all(q is not d for d in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr,
                            betas=(0.9, 0.99))
    sched = schedule(args)
    lambdas = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: sched(s) / args.lr)
    batches = xn.data.windows(train_ids, args.context, args.batch, seed=args.seed)
    model.train()
    start = time.perf_counter()
    for _ in range(args.iters):
        x, y = (torch.from_numpy(a) for a in next(batches))
        loss = nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lambdas.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        total = 0.0
        for s in range(0, len(x_val), 256):
            xb, yb = (torch.from_numpy(a[s:s + 256]) for a in (x_val, y_val))
            total += nn.functional.cross_entropy(model(xb).reshape(-1, VOCAB),
                                                 yb.reshape(-1), reduction="sum").item()
    return total / y_val.size, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a baby GPT-2 on Python source")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=None,
                        help="warmup steps (default: a tenth of --iters, at most 100)")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--train-chars", type=int, default=1_000_000)
    parser.add_argument("--val-chars", type=int, default=100_000)
    parser.add_argument("--sample-chars", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS/torch threads (default: the libraries' own)")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=None,
                        help="also train the same model in PyTorch (default: if installed)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(100, max(1, args.iters // 10))

    be = xn.use(args.backend, device=args.device)
    if args.threads:
        xn.backends.limit_threads(args.threads)
    train_text, val_text = stdlib_text()
    train_ids = encode(train_text[: args.train_chars])
    x_val, y_val = held_out(encode(val_text[: args.val_chars + 1]), args.context,
                            args.val_chars // args.context)
    print(f"Python {platform.python_version()} standard library: {len(train_ids):,} "
          f"training and {y_val.size:,} held-out characters; backend {be.name} on "
          f"{be.device_name}, threads {args.threads or 'default'}, seed {args.seed}")

    model, initial, nats, seconds, last = train_xpnet(args, train_ids, x_val, y_val)
    params = sum(p.value.size for p in model.parameters())
    print(f"model: {params:,} parameters; {args.iters} iterations of batch {args.batch} x "
          f"{args.context}")
    print(f"xpnet    held-out loss {nats:.4f} nats/char ({nats / math.log(2):.3f} bits)   "
          f"training {seconds:.1f} s (last batch loss {last:.3f})")
    prompt = "def __init__(self"
    ids = xn.generate(model, encode(prompt), args.sample_chars, temperature=0.8, top_k=20,
                      seed=args.seed)
    print(f"sample:\n{decode(xn.to_numpy(ids))}")

    reference = args.reference
    if reference is None:
        reference = importlib.util.find_spec("torch") is not None
    if reference:
        ref, ref_seconds = train_torch(args, initial, train_ids, x_val, y_val)
        print(f"pytorch  held-out loss {ref:.4f} nats/char ({ref / math.log(2):.3f} bits)   "
              f"training {ref_seconds:.1f} s (same weights and batches, its own dropout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
