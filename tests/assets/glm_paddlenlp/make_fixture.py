"""Writes this folder's fixture with PaddleNLP 2.8.1 (not run by the tests; README says how to run it).

A tiny PaddleNLP ChatGLMForCausalLM (GLM v1) with seeded non-trivial weights, saved with
save_pretrained, and its logits for fixed inputs: three samples whose positions PaddleNLP
derives from their [gMASK]/[MASK]/<sop> tokens (attention mask: the prefix rule of its
tokenizer), and one plain causal sample given explicit positions and a causal mask.
"""

import json
import os
import sys

import numpy as np
import paddle
from paddlenlp.transformers import ChatGLMConfig, ChatGLMForCausalLM

OUT = os.path.dirname(os.path.abspath(__file__))
MASK, GMASK, SOP, EOS = 150, 151, 154, 155


def seeded(model, seed=7):
    """Norm weights 1 + 0.2 N, biases 0.2 N, matrices N(0, 0.5 / sqrt(fan_in)), embedding N / sqrt(hidden)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        shape = list(p.shape)
        if len(shape) == 1:
            value = (1.0 if "layernorm.weight" in name else 0.0) + 0.2 * rng.standard_normal(shape)
        elif "word_embeddings" in name:
            value = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:
            value = 0.5 / np.sqrt(shape[0]) * rng.standard_normal(shape)
        p.set_value(value.astype("float32"))


def prefix_mask(ids):
    """[b, 1, s, s] bool: causal, plus every query sees the keys before the first <sop>."""
    b, s = ids.shape
    mask = np.tril(np.ones((b, 1, s, s), bool))
    for i, row in enumerate(ids):
        context = list(row).index(SOP) if SOP in row else s
        mask[i, :, :, :context] = True
    return mask


def main():
    paddle.set_device("cpu")
    config = ChatGLMConfig(vocab_size=160, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           inner_hidden_size=48, max_sequence_length=64, layernorm_epsilon=1e-5,
                           bos_token_id=SOP, eos_token_id=EOS, mask_token_id=MASK, gmask_token_id=GMASK,
                           pad_token_id=3)
    paddle.seed(1)
    model = ChatGLMForCausalLM(config)
    seeded(model)
    model.eval()
    rs = np.random.RandomState(5)
    words = lambda n: list(rs.randint(5, 150, n))                       # noqa: E731
    derived = np.array([
        words(5) + [GMASK, SOP] + words(5),                             # chat prompt: ... [gMASK] <sop> answer
        words(2) + [MASK] + words(3) + [SOP] + words(5),                # blank filling with [MASK]
        words(1) + [GMASK] + words(2) + [SOP] + words(7),               # [gMASK] earlier in the context
    ], dtype="int64")
    causal = np.array([words(12)], dtype="int64")                       # pretraining text: no special tokens
    with paddle.no_grad():
        logits_derived = model(input_ids=paddle.to_tensor(derived),
                               attention_mask=paddle.to_tensor(prefix_mask(derived)))[0].numpy()
        s = causal.shape[1]
        positions = np.stack([np.arange(s), np.zeros(s, np.int64)])[None]   # [1, 2, s]
        logits_causal = model(input_ids=paddle.to_tensor(causal), position_ids=paddle.to_tensor(positions),
                              attention_mask=paddle.to_tensor(np.tril(np.ones((1, 1, s, s), bool))))[0].numpy()
    model.save_pretrained(os.path.join(OUT, "model"), safe_serialization=True)
    for extra in ("generation_config.json",):
        path = os.path.join(OUT, "model", extra)
        if os.path.exists(path):
            os.unlink(path)
    np.savez(os.path.join(OUT, "expected.npz"), derived_ids=derived, derived_logits=logits_derived,
             causal_ids=causal, causal_positions=positions, causal_logits=logits_causal)
    print(json.dumps({"paddle": paddle.__version__, "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
