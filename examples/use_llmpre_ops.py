"""Using llmpre's fused ops from another Paddle project.

    pip install llmpre paddlepaddle==3.3.1
    python examples/use_llmpre_ops.py

``import llmpre.ops`` registers llmpre's Paddle custom ops (compiled into the
wheel, nothing is built at run time); the functions below are ordinary Paddle
ops with autograd, usable in any ``paddle.nn.Layer``. Each has a pure-Paddle
reference in ``llmpre.ops.reference`` with the same contract.
"""

from __future__ import annotations

import paddle
import paddle.nn as nn

import llmpre.ops as ops


class TinyBlock(nn.Layer):
    """Pre-norm attention + SwiGLU MLP written directly against llmpre.ops."""

    def __init__(self, hidden: int = 64, heads: int = 4, kv_heads: int = 2, inter: int = 176):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.norm1 = self.create_parameter([hidden], default_initializer=nn.initializer.Constant(1.0))
        self.norm2 = self.create_parameter([hidden], default_initializer=nn.initializer.Constant(1.0))
        self.q = nn.Linear(hidden, heads * self.head_dim, bias_attr=False)
        self.kv = nn.Linear(hidden, 2 * kv_heads * self.head_dim, bias_attr=False)
        self.o = nn.Linear(heads * self.head_dim, hidden, bias_attr=False)
        self.gate, self.up = nn.Linear(hidden, inter, bias_attr=False), nn.Linear(hidden, inter, bias_attr=False)
        self.down = nn.Linear(inter, hidden, bias_attr=False)
        inv_freq = 1.0 / (10000.0 ** (paddle.arange(0, self.head_dim, 2, dtype="float32") / self.head_dim))
        angles = paddle.arange(512, dtype="float32").unsqueeze(1) * inv_freq.unsqueeze(0)  # [512, d/2]
        self.cos, self.sin = angles.cos(), angles.sin()

    def forward(self, x):                                                      # x [b, s, hidden]
        b, s, _ = x.shape
        h = ops.rms_norm(x, self.norm1, 1e-6)
        q = self.q(h).reshape([b, s, self.heads, self.head_dim])
        k, v = self.kv(h).reshape([b, s, 2 * self.kv_heads, self.head_dim]).split(2, axis=2)
        q, k = ops.rotary(q, k, self.cos, self.sin)                            # HF rotate_half layout
        attn = ops.flash_attention(q, k, v, causal=True)                       # GQA: 4 query heads, 2 KV heads
        x = x + self.o(attn.reshape([b, s, -1]))
        h = ops.rms_norm(x, self.norm2, 1e-6)
        return x + self.down(ops.swiglu(self.gate(h), self.up(h)))


def main():
    print("llmpre.ops build:", ops.status())
    paddle.seed(0)
    vocab = 1000
    embed, block, head = nn.Embedding(vocab, 64), TinyBlock(), nn.Linear(64, vocab, bias_attr=False)
    params = embed.parameters() + block.parameters() + head.parameters()
    opt = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=params)
    tokens = paddle.randint(0, vocab, [2, 33])
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    for step in range(5):
        loss = ops.cross_entropy(head(block(embed(inputs))), labels, ignore_index=-100)
        loss.backward()
        opt.step()
        opt.clear_grad()
        print(f"step {step}: loss {float(loss):.4f}")
    # The same computation with the pure-Paddle references, for comparison:
    x = paddle.randn([2, 8, 64])
    w = paddle.ones([64])
    diff = float((ops.rms_norm(x, w, 1e-6) - ops.reference.rms_norm(x, w, 1e-6)).abs().max())
    print(f"rms_norm fused vs reference: max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
