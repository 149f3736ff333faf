"""A character-level language model: a small causal transformer trained on Python source.

    python examples/char_lm.py                       # xpnet (auto backend), then PyTorch
    python examples/char_lm.py --backend torch --no-reference
    python examples/char_lm.py --steps 300           # a quick look

Data: the Python standard library's own top-level modules (``Lib/*.py``), which every
machine with Python has. Files are taken in name order; the last tenth of them (by
name: other modules, never seen in training) is the held-out text. Characters are
printable ASCII, newline and tab, plus one token for anything else (98 tokens).

Model: ``xn.models.transformer``: token and learned position embeddings, pre-norm
transformer blocks with causal self-attention, a final LayerNorm and a Linear to the
vocabulary. Each training example is a window of ``--length`` characters and the
same window shifted by one as targets; the loss is the cross-entropy of every
position. The script prints bits per character on the held-out text
(``cross-entropy / ln 2``) and a continuation sampled from the trained model.

``--reference`` (the default when torch is installed) then trains the same model
in PyTorch from the same initial weights (``TransformerEncoderLayer`` with
``norm_first=True``; xpnet's parameter names are PyTorch's, so ``state_dict``
carries them across) on the same windows in the same order, and prints its bits per
character and seconds beside xpnet's.

The text differs between Python versions, so figures are for the interpreter named
in the first line of output.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import platform
import sysconfig
import time

import numpy as np

import xpnet as xn
import xpnet.data

#: printable ASCII, newline and tab; every other character maps to the last token
ALPHABET = "\n\t" + "".join(chr(c) for c in range(32, 127))
OTHER = len(ALPHABET)
VOCAB = OTHER + 1


def stdlib_text() -> tuple[str, str]:
    """(training text, held-out text): the standard library's top-level modules."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    if len(files) < 10:
        raise SystemExit(f"found only {len(files)} standard-library source files; this "
                         f"example needs the Python sources installed")
    cut = len(files) - len(files) // 10
    read = [open(f, encoding="utf-8", errors="replace").read() for f in files]
    return "".join(read[:cut]), "".join(read[cut:])


def encode(text: str) -> np.ndarray:
    """Token ids, int64, one per character."""
    table = {ch: i for i, ch in enumerate(ALPHABET)}
    return np.array([table.get(ch, OTHER) for ch in text], dtype=np.int64)


def decode(ids) -> str:
    return "".join(ALPHABET[i] if i < OTHER else "?" for i in ids)


def windows(ids: np.ndarray, length: int, count: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows: inputs ``(n, length)`` and targets shifted by one."""
    n = (len(ids) - 1) // length
    if count is not None:
        n = min(n, count)
    x = ids[: n * length].reshape(n, length)
    y = ids[1: n * length + 1].reshape(n, length)
    return x, y


def sample(model: xn.Layer, prompt: str, n: int, length: int, rng: np.random.Generator,
           temperature: float = 0.8) -> str:
    """Continue ``prompt`` by ``n`` characters, each drawn from the model's softmax."""
    ids = list(encode(prompt))
    be = model.backend
    for _ in range(n):
        context = np.array([ids[-length:]], dtype=np.int64)
        logits = xn.to_numpy(model(be.asarray(context)))[0, -1].astype(np.float64)
        p = np.exp((logits - logits.max()) / temperature)
        ids.append(int(rng.choice(VOCAB, p=p / p.sum())))
    return decode(ids[len(prompt):])


def build(args) -> xn.Layer:
    return xn.models.transformer(VOCAB, embed_dim=args.width, num_heads=args.heads,
                                 num_layers=args.layers, max_len=args.length, causal=True)


def train_xpnet(args, x, y, x_val, y_val) -> tuple[xn.Layer, dict, float, float]:
    """Train with xn.fit; returns (model, initial state_dict, held-out bpc, seconds)."""
    xn.seed(args.seed)
    model = build(args)
    initial = model.state_dict()
    epochs = -(-args.steps * args.batch // len(x))
    opt = xn.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    start = time.perf_counter()
    xn.fit(model, x, y, loss=xn.SoftmaxCrossEntropy(), optimizer=opt, epochs=epochs,
           batch_size=args.batch, seed=args.seed, progress=args.progress, metrics=())
    seconds = time.perf_counter() - start
    nats = xn.evaluate(model, x_val, y_val, loss=xn.SoftmaxCrossEntropy())["loss"]
    return model, initial, nats / math.log(2), seconds


def train_torch(args, initial: dict, x, y, x_val, y_val) -> tuple[float, float]:
    """The same model, initial weights, windows and batch order in PyTorch eager."""
    import torch
    from torch import nn

    class CharTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            e = args.width
            self.embed = nn.Embedding(VOCAB, e)
            self.pos = nn.Parameter(torch.zeros(args.length, e))
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(e, args.heads, 4 * e, dropout=0.0,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
                for _ in range(args.layers))
            self.norm = nn.LayerNorm(e)
            self.head = nn.Linear(e, VOCAB)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(
                args.length), persistent=False)

        def forward(self, ids):
            n = ids.shape[1]
            h = self.embed(ids) + self.pos[:n]
            for block in self.blocks:
                h = block(h, src_mask=self.mask[:n, :n], is_causal=True)
            return self.head(self.norm(h))

    torch.manual_seed(args.seed)
    model = CharTransformer()
    names = xpnet_to_torch_names(list(initial), args.layers)
    model.load_state_dict({names[k]: torch.from_numpy(v) for k, v in initial.items()})
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    epochs = -(-args.steps * args.batch // len(x))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.from_numpy(epoch_order(args.seed, epoch, len(x)))
        for s in range(0, len(x), args.batch):
            idx = order[s:s + args.batch]
            logits = model(xt[idx])
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), yt[idx].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits = model(torch.from_numpy(x_val))
        nats = nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                           torch.from_numpy(y_val).reshape(-1)).item()
    return nats / math.log(2), seconds


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation ``xn.fit`` uses for ``epoch`` (the same seeded stream)."""
    return xpnet.data.epoch_order(n, seed, epoch)


def xpnet_to_torch_names(names: list[str], layers: int) -> dict[str, str]:
    """xpnet's parameter names in ``xn.models.transformer`` (a Sequential: embedding,
    positions, blocks, norm, head) -> the CharTransformer's. Within a block the names
    are already PyTorch's (``self_attn.in_proj_weight``, ``linear1.weight``...)."""
    prefixes = {"0.": "embed.", "1.": "pos", f"{layers + 2}.": "norm.",
                f"{layers + 3}.": "head."}
    prefixes.update({f"{i + 2}.": f"blocks.{i}." for i in range(layers)})
    out = {}
    for name in names:
        head, rest = name.split(".", 1)
        target = prefixes[head + "."]
        out[name] = target if target == "pos" else target + rest
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="character-level transformer LM")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-chars", type=int, default=1_000_000)
    parser.add_argument("--val-chars", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=None,
                        help="also train the same model in PyTorch (default: if installed)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    be = xn.use(args.backend, device=args.device)
    train_text, val_text = stdlib_text()
    x, y = windows(encode(train_text[: args.train_chars + 1]), args.length)
    x_val, y_val = windows(encode(val_text[: args.val_chars + 1]), args.length)
    print(f"Python {platform.python_version()} standard library: {len(x)} training and "
          f"{len(x_val)} held-out windows of {args.length} characters")
    print(f"backend: {be.name} on {be.device_name}")

    model, initial, bpc, seconds = train_xpnet(args, x, y, x_val, y_val)
    print(f"xpnet    held-out bits/char {bpc:.3f}   training {seconds:.1f} s")
    prompt = "def __init__(self"
    text = sample(model, prompt, 160, args.length, np.random.default_rng(args.seed))
    print(f"sample:\n{prompt}{text}")

    reference = args.reference
    if reference is None:
        import importlib.util

        reference = importlib.util.find_spec("torch") is not None
    if reference:
        ref_bpc, ref_seconds = train_torch(args, initial, x, y, x_val, y_val)
        print(f"pytorch  held-out bits/char {ref_bpc:.3f}   training {ref_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
