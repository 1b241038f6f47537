"""Named model configurations: a tiny test model and every architecture of PaddleNLP's
pretraining weight table (``llm/docs/pretrain.md``), with the numbers of the released
checkpoints' ``config.json`` (base models; chat/instruct variants share their base's
architecture and resolve to it through :data:`ALIASES`).

Rows: name, hidden, intermediate, layers, heads, kv_heads, vocab, max_positions, extra fields.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict

from llmpre.errors import ConfigError
from llmpre.models.config import GLMConfig, MLAConfig, ModelConfig, MoEConfig, RopeScaling

# Shared numerics of each family.
_LLAMA1 = dict(model_type="llama", rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
_LLAMA2 = dict(model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
_LLAMA3 = dict(model_type="llama", rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001)
_QWEN2 = dict(model_type="qwen2", attention_bias=True, rope_theta=1000000.0, bos_token_id=151643, eos_token_id=151643)
_Q6, _Q5 = dict(_QWEN2, rms_norm_eps=1e-6), dict(_QWEN2, rms_norm_eps=1e-5)
_TIED = dict(tie_word_embeddings=True)
_QWEN1 = dict(model_type="qwen", attention_bias=True, rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=151643)
_BAICHUAN = dict(model_type="baichuan", rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
_ALIBI = dict(position="alibi")
_GEMMA = dict(model_type="gemma", norm_type="rmsnorm_plus_one", scale_embeddings=True, hidden_act="gelu_tanh",
              tie_word_embeddings=True, rms_norm_eps=1e-6, head_dim=256, bos_token_id=2, eos_token_id=1)
_CHATGLM = dict(model_type="chatglm", rms_norm_eps=1e-5, head_dim=128, partial_rotary_factor=0.5,
                rope_interleaved=True, attention_bias=True, bos_token_id=None, eos_token_id=2)
_YUAN = dict(model_type="yuan", localized_filtering=True, tie_word_embeddings=True, rms_norm_eps=1e-6,
             bos_token_id=77185, eos_token_id=77185)
_MISTRAL = dict(model_type="mistral", rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
_GPT = dict(model_type="gpt2", norm_type="layernorm", position="learned", mlp_type="plain", hidden_act="gelu_tanh",
            attention_bias=True, attention_out_bias=True, mlp_bias=True, tie_word_embeddings=True,
            rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=50256)
_OPT = dict(_GPT, model_type="opt", hidden_act="relu", position_offset=2, bos_token_id=2, eos_token_id=2)
_BLOOM = dict(_GPT, model_type="bloom", position="alibi", embedding_norm=True, bos_token_id=1, eos_token_id=2)
# GLM: LayerNorm, biases everywhere, tied head; <sop> is bos, [MASK]/[gMASK] sit 4 and 3 below it (icetk).
# chatglm-6b is the first release (150528 tokens, 20000 of them image tokens), v1.1 dropped the image tokens.
_GLM = dict(model_type="glm", norm_type="layernorm", mlp_type="plain", hidden_act="gelu_tanh", attention_bias=True,
            attention_out_bias=True, mlp_bias=True, tie_word_embeddings=True, rms_norm_eps=1e-5)
_GLM_6B = dict(_GLM, bos_token_id=150004, eos_token_id=150005, glm=GLMConfig(150000, 150001))
_GLM_6B_V11 = dict(_GLM, bos_token_id=130004, eos_token_id=130005, glm=GLMConfig(130000, 130001))
_GLM_130B = dict(_GLM, mlp_type="gated", hidden_act="gelu", bos_token_id=150004, eos_token_id=150005,
                 glm=GLMConfig(150000, 150001, position_2d=False, deepnorm_init=True))


def _llama3_rope(factor: float) -> RopeScaling:
    return RopeScaling("llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=8192)


def _yarn(mscale: float) -> RopeScaling:
    return RopeScaling("yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0,
                       mscale=mscale, mscale_all_dim=mscale)


_ROPE_31, _ROPE_32 = _llama3_rope(8.0), _llama3_rope(32.0)
_L31, _L32 = dict(_LLAMA3, rope_scaling=_ROPE_31), dict(_LLAMA3, rope_scaling=_ROPE_32, **_TIED)

_DSV2 = dict(model_type="deepseek_v2", rms_norm_eps=1e-6, rope_interleaved=True, head_dim=192,
             rope_scaling=_yarn(0.707), bos_token_id=100000, eos_token_id=100001)
_DSV2_MLA = dict(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
_DSV2_MOE = dict(scoring_func="softmax", norm_topk_prob=False, router_aux_loss_coef=0.001, aux_loss_type="seq",
                 first_k_dense_replace=1, num_experts_per_tok=6)
_DSV3 = dict(_DSV2, model_type="deepseek_v3", rope_scaling=_yarn(1.0), bos_token_id=0, eos_token_id=1,
             mla=MLAConfig(q_lora_rank=1536, **_DSV2_MLA),
             moe=MoEConfig(num_experts=256, num_experts_per_tok=8, moe_intermediate_size=2048,
                           shared_expert_intermediate_size=2048, norm_topk_prob=True, scoring_func="sigmoid",
                           topk_method="noaux_tc", n_group=8, topk_group=4, routed_scaling_factor=2.5,
                           router_aux_loss_coef=0.001, aux_loss_type="seq", first_k_dense_replace=3))

#       name                hidden  inter  layers heads kv   vocab   max_pos  extra
_TABLE = [
    ("llama-tiny",            256,   688,    4,    4,   2,    8192,    1024, _LLAMA1),
    # LLaMA 1 (facebook/llama-*, huggyllama/llama-*) and Chinese LLaMA derivatives
    ("llama-7b",             4096, 11008,   32,   32,  32,   32000,    2048, _LLAMA1),
    ("llama-13b",            5120, 13824,   40,   40,  40,   32000,    2048, _LLAMA1),
    ("llama-30b",            6656, 17920,   60,   52,  52,   32000,    2048, _LLAMA1),
    ("llama-65b",            8192, 22016,   80,   64,  64,   32000,    2048, _LLAMA1),
    ("ziya-llama-13b",       5120, 13824,   40,   40,  40,   39424,    2048, _LLAMA1),
    # Llama 2 and derivatives
    ("llama2-7b",            4096, 11008,   32,   32,  32,   32000,    4096, _LLAMA2),
    ("llama2-13b",           5120, 13824,   40,   40,  40,   32000,    4096, _LLAMA2),
    ("llama2-70b",           8192, 28672,   80,   64,   8,   32000,    4096, _LLAMA2),
    ("linly-llama2-7b",      4096, 11008,   32,   32,  32,   40076,    4096, _LLAMA2),
    ("linly-llama2-13b",     5120, 13824,   40,   40,  40,   40076,    4096, _LLAMA2),
    # Llama 3 / 3.1 / 3.2 / 3.3
    ("llama3-8b",            4096, 14336,   32,   32,   8,  128256,    8192, _LLAMA3),
    ("llama3-70b",           8192, 28672,   80,   64,   8,  128256,    8192, _LLAMA3),
    ("llama3.1-8b",          4096, 14336,   32,   32,   8,  128256,  131072, _L31),
    ("llama3.1-70b",         8192, 28672,   80,   64,   8,  128256,  131072, _L31),
    ("llama3.1-405b",       16384, 53248,  126,  128,   8,  128256,  131072, _L31),
    ("llama3.2-1b",          2048,  8192,   16,   32,   8,  128256,  131072, _L32),
    ("llama3.2-3b",          3072,  8192,   28,   24,   8,  128256,  131072, _L32),
    ("llama3.3-70b",         8192, 28672,   80,   64,   8,  128256,  131072, _L31),
    # Mistral / Mixtral
    ("mistral-7b-v0.1",      4096, 14336,   32,   32,   8,   32000,   32768, dict(_MISTRAL, sliding_window=4096)),
    ("mistral-7b-v0.3",      4096, 14336,   32,   32,   8,   32768,   32768, dict(_MISTRAL, rope_theta=1000000.0)),
    ("mixtral-8x7b",         4096, 14336,   32,   32,   8,   32000,   32768,
     dict(_MISTRAL, model_type="mixtral", rope_theta=1000000.0,
          moe=MoEConfig(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=14336, router_aux_loss_coef=0.02))),
    # Qwen v1 (intermediate = MLP width, half of config.json's intermediate_size)
    ("qwen-7b",              4096, 11008,   32,   32,  32,  151936,   32768, dict(_QWEN1, head_dim=128)),
    ("qwen-14b",             5120, 13696,   40,   40,  40,  152064,    8192, dict(_QWEN1, head_dim=128)),
    ("qwen-72b",             8192, 24576,   80,   64,  64,  152064,   32768,
     dict(_QWEN1, head_dim=128, rope_theta=1e6)),
    # Qwen1.5 (model_type qwen2)
    ("qwen1.5-0.5b",         1024,  2816,   24,   16,  16,  151936,   32768, dict(_Q6, **_TIED)),
    ("qwen1.5-1.8b",         2048,  5504,   24,   16,  16,  151936,   32768, _Q6),
    ("qwen1.5-4b",           2560,  6912,   40,   20,  20,  151936,   32768, _Q6),
    ("qwen1.5-7b",           4096, 11008,   32,   32,  32,  151936,   32768, _Q6),
    ("qwen1.5-14b",          5120, 13696,   40,   40,  40,  152064,   32768, _Q6),
    ("qwen1.5-32b",          5120, 27392,   64,   40,   8,  152064,   32768, _Q6),
    ("qwen1.5-72b",          8192, 24576,   80,   64,  64,  152064,   32768, _Q6),
    ("qwen1.5-110b",         8192, 49152,   80,   64,   8,  152064,   32768, _Q6),
    ("qwen1.5-moe-a2.7b",    2048,  5632,   24,   16,  16,  151936,    8192,
     dict(_Q6, model_type="qwen2_moe",
          moe=MoEConfig(num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
                        shared_expert_intermediate_size=5632, shared_expert_gate=True, norm_topk_prob=False,
                        router_aux_loss_coef=0.001))),
    # Qwen2
    ("qwen2-0.5b",            896,  4864,   24,   14,   2,  151936,  131072, dict(_Q6, **_TIED)),
    ("qwen2-1.5b",           1536,  8960,   28,   12,   2,  151936,  131072, dict(_Q6, **_TIED)),
    ("qwen2-7b",             3584, 18944,   28,   28,   4,  152064,  131072, _Q6),
    ("qwen2-72b",            8192, 29568,   80,   64,   8,  152064,  131072, _Q5),
    ("qwen2-57b-a14b",       3584, 18944,   28,   28,   4,  151936,  131072,
     dict(_Q6, model_type="qwen2_moe",
          moe=MoEConfig(num_experts=64, num_experts_per_tok=8, moe_intermediate_size=2560,
                        shared_expert_intermediate_size=20480, shared_expert_gate=True, norm_topk_prob=False,
                        router_aux_loss_coef=0.001))),
    ("qwen2-math-1.5b",      1536,  8960,   28,   12,   2,  151936,    4096, dict(_Q6, rope_theta=10000.0, **_TIED)),
    ("qwen2-math-7b",        3584, 18944,   28,   28,   4,  152064,    4096, dict(_Q6, rope_theta=10000.0)),
    ("qwen2-math-72b",       8192, 29568,   80,   64,   8,  152064,    4096, dict(_Q5, rope_theta=10000.0)),
    # Qwen2.5 and its Math / Coder / QwQ / long-context variants
    ("qwen2.5-0.5b",          896,  4864,   24,   14,   2,  151936,   32768, dict(_Q6, **_TIED)),
    ("qwen2.5-1.5b",         1536,  8960,   28,   12,   2,  151936,  131072, dict(_Q6, **_TIED)),
    ("qwen2.5-3b",           2048, 11008,   36,   16,   2,  151936,   32768, dict(_Q6, **_TIED)),
    ("qwen2.5-7b",           3584, 18944,   28,   28,   4,  152064,  131072, _Q6),
    ("qwen2.5-14b",          5120, 13824,   48,   40,   8,  152064,  131072, _Q5),
    ("qwen2.5-32b",          5120, 27648,   64,   40,   8,  152064,  131072, _Q5),
    ("qwen2.5-72b",          8192, 29568,   80,   64,   8,  152064,  131072, _Q5),
    ("qwen2.5-7b-1m",        3584, 18944,   28,   28,   4,  152064, 1010000, dict(_Q5, rope_theta=1e7)),
    ("qwen2.5-14b-1m",       5120, 13824,   48,   40,   8,  152064, 1010000, dict(_Q5, rope_theta=1e7)),
    ("qwen2.5-math-1.5b",    1536,  8960,   28,   12,   2,  151936,    4096, dict(_Q6, rope_theta=10000.0, **_TIED)),
    ("qwen2.5-math-7b",      3584, 18944,   28,   28,   4,  152064,    4096, dict(_Q6, rope_theta=10000.0)),
    ("qwen2.5-math-72b",     8192, 29568,   80,   64,   8,  152064,    4096, dict(_Q5, rope_theta=10000.0)),
    ("qwen2.5-coder-1.5b",   1536,  8960,   28,   12,   2,  151936,   32768, dict(_Q6, **_TIED)),
    ("qwen2.5-coder-7b",     3584, 18944,   28,   28,   4,  152064,   32768, _Q6),
    ("qwq-32b",              5120, 27648,   64,   40,   8,  152064,   40960, _Q5),
    ("qwq-32b-preview",      5120, 27648,   64,   40,   8,  152064,   32768, _Q5),
    # DeepSeek-R1 distillations into Qwen2.5 (Llama ones alias llama3.1-8b / llama3.3-70b)
    ("deepseek-r1-distill-qwen-1.5b", 1536, 8960, 28, 12,   2,  151936,  131072, dict(_Q6, rope_theta=10000.0)),
    ("deepseek-r1-distill-qwen-7b",   3584, 18944, 28, 28,  4,  152064,  131072, dict(_Q6, rope_theta=10000.0)),
    ("deepseek-r1-distill-qwen-14b",  5120, 13824, 48, 40,  8,  152064,  131072, _Q5),
    ("deepseek-r1-distill-qwen-32b",  5120, 27648, 64, 40,  8,  152064,  131072, _Q5),
    # Baichuan: 7B RoPE, 13B ALiBi; Baichuan2 adds the normalised lm_head
    ("baichuan-7b",          4096, 11008,   32,   32,  32,   64000,    4096, _BAICHUAN),
    ("baichuan-13b",         5120, 13696,   40,   40,  40,   64000,    4096, dict(_BAICHUAN, **_ALIBI)),
    ("baichuan2-7b",         4096, 11008,   32,   32,  32,  125696,    4096, dict(_BAICHUAN, lm_head_norm=True)),
    ("baichuan2-13b",        5120, 13696,   40,   40,  40,  125696,    4096,
     dict(_BAICHUAN, lm_head_norm=True, **_ALIBI)),
    # ChatGLM2/3: multi-query groups, rotary on half of each head
    ("chatglm2-6b",          4096, 13696,   28,   32,   2,   65024,   32768, _CHATGLM),
    ("chatglm3-6b",          4096, 13696,   28,   32,   2,   65024,    8192, _CHATGLM),
    # ChatGLM-6B (GLM v1): 2-D positions, prefix attention, post-LN with sqrt(2 layers)-scaled residuals, GELU
    ("chatglm-6b",           4096, 16384,   28,   32,  32,  150528,    2048, _GLM_6B),
    ("chatglm-6b-v1.1",      4096, 16384,   28,   32,  32,  130528,    2048, _GLM_6B_V11),
    # GLM-130B (THUDM/GLM-130B configs/model_glm_130b.sh): DeepNorm, GeGLU (exact GELU), 1-D RoPE
    ("glm-130b",            12288, 32768,   70,   96,  96,  150528,    2048, _GLM_130B),
    # Gemma
    ("gemma-2b",             2048, 16384,   18,    8,   1,  256000,    8192, _GEMMA),
    ("gemma-7b",             3072, 24576,   28,   16,  16,  256000,    8192, _GEMMA),
    # Yuan2 (localized filtering attention)
    ("yuan2-2b",             2048,  8192,   24,   32,  32,  135040,    8192, _YUAN),
    ("yuan2-51b",            8192, 32768,   42,   64,  64,  135040,    4096, _YUAN),
    ("yuan2-102b",           8192, 32768,   84,   64,  64,  135040,    4096, _YUAN),
    # DeepSeek-V2 / V3 (latent attention, fine-grained MoE with shared experts)
    ("deepseek-v2",          5120, 12288,   60,  128, 128,  102400,  163840,
     dict(_DSV2, mla=MLAConfig(q_lora_rank=1536, **_DSV2_MLA),
          moe=MoEConfig(num_experts=160, moe_intermediate_size=1536, shared_expert_intermediate_size=3072,
                        topk_method="group_limited_greedy", n_group=8, topk_group=3, routed_scaling_factor=16.0,
                        **_DSV2_MOE))),
    ("deepseek-v2-lite",     2048, 10944,   27,   16,  16,  102400,  163840,
     dict(_DSV2, mla=MLAConfig(q_lora_rank=None, **_DSV2_MLA),
          moe=MoEConfig(num_experts=64, moe_intermediate_size=1408, shared_expert_intermediate_size=2816,
                        **_DSV2_MOE))),
    ("deepseek-v3",          7168, 18432,   61,  128, 128,  129280,  163840, _DSV3),
    # GPT-3 / GPT-2 (PaddleNLP's gpt presets, HF GPT-2 layout)
    ("gpt2-en",               768,  3072,   12,   12,  12,   50304,    1024, _GPT),
    ("gpt2-medium-en",       1024,  4096,   24,   16,  16,   50304,    1024, _GPT),
    ("gpt2-large-en",        1280,  5120,   36,   20,  20,   50257,    1024, _GPT),
    ("gpt2-xl-en",           1600,  6400,   48,   25,  25,   50257,    1024, _GPT),
    ("gpt3-1.3b-en",         2048,  8192,   24,   16,  16,   50304,    1024, _GPT),
    ("gpt3-13b-en",          5120, 20480,   40,   40,  40,   50304,    2048, _GPT),
    ("gpt3-89b-en",         12288, 49152,   48,   96,  96,   51200,    1024, _GPT),
    ("gpt3-175b-en",        12288, 49152,   96,   96,  96,   51200,    1024, _GPT),
    # OPT (350m: post-norm, 512-wide embeddings)
    ("opt-125m",              768,  3072,   12,   12,  12,   50272,    2048, _OPT),
    ("opt-350m",             1024,  4096,   24,   16,  16,   50272,    2048,
     dict(_OPT, pre_norm=False, final_norm=False, word_embed_proj_dim=512)),
    ("opt-1.3b",             2048,  8192,   24,   32,  32,   50272,    2048, _OPT),
    ("opt-2.7b",             2560, 10240,   32,   32,  32,   50272,    2048, _OPT),
    ("opt-6.7b",             4096, 16384,   32,   32,  32,   50272,    2048, _OPT),
    ("opt-13b",              5120, 20480,   40,   40,  40,   50272,    2048, _OPT),
    ("opt-30b",              7168, 28672,   48,   56,  56,   50272,    2048, _OPT),
    ("opt-66b",              9216, 36864,   64,   72,  72,   50272,    2048, _OPT),
    # Bloom (ALiBi, embedding LayerNorm)
    ("bloom-560m",           1024,  4096,   24,   16,  16,  250880,    2048, _BLOOM),
    ("bloom-1b1",            1536,  6144,   24,   16,  16,  250880,    2048, _BLOOM),
    ("bloom-3b",             2560, 10240,   30,   32,  32,  250880,    2048, _BLOOM),
    ("bloom-7b1",            4096, 16384,   30,   32,  32,  250880,    2048, _BLOOM),
]

PRESETS: "OrderedDict[str, ModelConfig]" = OrderedDict(
    (name, ModelConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=a,
                       num_key_value_heads=kv, vocab_size=v, max_position_embeddings=p, **extra))
    for name, h, i, n, a, kv, v, p, extra in _TABLE
)


def _variants(preset: str, *repos: str) -> dict:
    return {repo: preset for repo in repos}


# Hub repository ids (HF and PaddleNLP spellings, base and chat/instruct) -> preset name.
ALIASES = {
    **{f"{org}/llama-{s}": f"llama-{s}" for org in ("facebook", "huggyllama") for s in ("7b", "13b", "30b", "65b")},
    **{f"meta-llama/Llama-2-{s}{suffix}": f"llama2-{s}" for s in ("7b", "13b", "70b")
       for suffix in ("", "-hf", "-chat", "-chat-hf")},
    **_variants("llama2-7b", "FlagAlpha/Llama2-Chinese-7b-Chat"),
    **_variants("llama2-13b", "FlagAlpha/Llama2-Chinese-13b-Chat"),
    **_variants("ziya-llama-13b", "idea-ccnl/ziya-llama-13b-v1"),
    **_variants("linly-llama2-7b", "linly-ai/chinese-llama-2-7b"),
    **_variants("linly-llama2-13b", "linly-ai/chinese-llama-2-13b"),
    **_variants("llama3-8b", "meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct"),
    **_variants("llama3-70b", "meta-llama/Meta-Llama-3-70B", "meta-llama/Meta-Llama-3-70B-Instruct"),
    **_variants("llama3.1-8b", "meta-llama/Meta-Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B-Instruct",
                "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-Guard-3-8B",
                "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"),
    **_variants("llama3.1-70b", "meta-llama/Meta-Llama-3.1-70B", "meta-llama/Meta-Llama-3.1-70B-Instruct",
                "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct"),
    **_variants("llama3.1-405b", "meta-llama/Meta-Llama-3.1-405B", "meta-llama/Meta-Llama-3.1-405B-Instruct",
                "meta-llama/Llama-3.1-405B", "meta-llama/Llama-3.1-405B-Instruct"),
    **_variants("llama3.2-1b", "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct",
                "meta-llama/Llama-Guard-3-1B"),
    **_variants("llama3.2-3b", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.2-3B-Instruct"),
    **_variants("llama3.3-70b", "meta-llama/Llama-3.3-70B-Instruct", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"),
    **_variants("mistral-7b-v0.1", "mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1"),
    **_variants("mistral-7b-v0.3", "mistralai/Mistral-7B-v0.3", "mistralai/Mistral-7B-Instruct-v0.3"),
    **_variants("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
    **{f"qwen/qwen-{s}{c}": f"qwen-{s}" for s in ("7b", "14b", "72b") for c in ("", "-chat")},
    **{f"Qwen/Qwen1.5-{s}{c}": f"qwen1.5-{s.lower()}" for s in ("0.5B", "1.8B", "4B", "7B", "14B", "32B", "72B",
                                                                "110B", "MoE-A2.7B") for c in ("", "-Chat")},
    **{f"Qwen/Qwen2-{s}{c}": f"qwen2-{s.lower()}" for s in ("0.5B", "1.5B", "7B", "72B", "57B-A14B")
       for c in ("", "-Instruct")},
    **{f"Qwen/Qwen2-Math-{s}{c}": f"qwen2-math-{s.lower()}" for s in ("1.5B", "7B", "72B") for c in ("", "-Instruct")},
    **_variants("qwen2-math-72b", "Qwen/Qwen2-Math-RM-72B"),
    **{f"Qwen/Qwen2.5-{s}{c}": f"qwen2.5-{s.lower()}" for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")
       for c in ("", "-Instruct")},
    **_variants("qwen2.5-7b-1m", "Qwen/Qwen2.5-7B-Instruct-1M"),
    **_variants("qwen2.5-14b-1m", "Qwen/Qwen2.5-14B-Instruct-1M"),
    **{f"Qwen/Qwen2.5-Math-{s}{c}": f"qwen2.5-math-{s.lower()}" for s in ("1.5B", "7B", "72B")
       for c in ("", "-Instruct")},
    **_variants("qwen2.5-math-72b", "Qwen/Qwen2.5-Math-RM-72B"),
    **{f"Qwen/Qwen2.5-Coder-{s}{c}": f"qwen2.5-coder-{s.lower()}" for s in ("1.5B", "7B") for c in ("", "-Instruct")},
    **_variants("qwq-32b", "Qwen/QwQ-32B"),
    **_variants("qwq-32b-preview", "Qwen/QwQ-32B-Preview"),
    **{f"paddlenlp/PP-UIE-{s}": f"qwen2.5-{s.lower()}" for s in ("0.5B", "1.5B", "7B", "14B")},
    **{f"deepseek-ai/DeepSeek-R1-Distill-Qwen-{s}": f"deepseek-r1-distill-qwen-{s.lower()}"
       for s in ("1.5B", "7B", "14B", "32B")},
    **_variants("baichuan-7b", "baichuan-inc/Baichuan-7B"),
    **_variants("baichuan-13b", "baichuan-inc/Baichuan-13B-Base", "baichuan-inc/Baichuan-13B-Chat"),
    **_variants("baichuan2-7b", "baichuan-inc/Baichuan2-7B-Base", "baichuan-inc/Baichuan2-7B-Chat"),
    **_variants("baichuan2-13b", "baichuan-inc/Baichuan2-13B-Base", "baichuan-inc/Baichuan2-13B-Chat"),
    **_variants("chatglm2-6b", "THUDM/chatglm2-6b"),
    **_variants("chatglm3-6b", "THUDM/chatglm3-6b"),
    **_variants("chatglm-6b", "THUDM/chatglm-6b"),
    **_variants("chatglm-6b-v1.1", "THUDM/chatglm-6b-v1.1"),
    **{f"google/gemma-{s}{c}": f"gemma-{s}" for s in ("2b", "7b") for c in ("", "-it")},
    **{f"IEITYuan/Yuan2-{s}{h}": f"yuan2-{s.lower()}" for s in ("2B", "51B", "102B") for h in ("", "-hf")},
    **_variants("deepseek-v2", "deepseek-ai/DeepSeek-V2", "deepseek-ai/DeepSeek-V2-Chat",
                "deepseek-ai/DeepSeek-Coder-V2-Base", "deepseek-ai/DeepSeek-Coder-V2-Instruct"),
    **_variants("deepseek-v2-lite", "deepseek-ai/DeepSeek-V2-Lite", "deepseek-ai/DeepSeek-V2-Lite-Chat",
                "deepseek-ai/DeepSeek-Coder-V2-Lite-Base", "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"),
    **_variants("deepseek-v3", "deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-V3-Base", "deepseek-ai/DeepSeek-R1",
                "deepseek-ai/DeepSeek-R1-Zero"),
    **{f"facebook/opt-{s}": f"opt-{s}" for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")},
    **_variants("opt-1.3b", "facebook/opt-iml-1.3b", "facebook/opt-iml-max-1.3b", "opt-iml-max-1.3b"),
    **{f"bigscience/{m}-{s}": f"bloom-{s}" for m in ("bloom", "bloomz") for s in ("560m", "1b1", "3b", "7b1")},
    **_variants("bloom-560m", "bigscience/bloom-560m-bf16"),
    **_variants("bloom-7b1", "bigscience/bloomz-7b1-mt", "bigscience/bloomz-7b1-p3", "bellegroup/belle-7b-2m"),
    **{f"gpt3-{s}-en": f"gpt3-{s.lower()}-en" for s in ("1.3B", "13B", "89B", "175B")},
}
_BY_LOWER = {**{k.lower(): v for k, v in ALIASES.items()}, **{k.lower(): k for k in PRESETS}}


def is_known_name(name: str) -> bool:
    """Whether ``name`` is a preset or a hub alias (any case)."""
    return str(name).lower() in _BY_LOWER


def close_names(name: str, n: int = 5) -> list[str]:
    """Presets and hub aliases spelled like ``name``, best first."""
    spelled = {k.lower(): k for k in list(PRESETS) + list(ALIASES)}
    return [spelled[c] for c in difflib.get_close_matches(str(name).lower(), spelled, n=n, cutoff=0.6)]


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (case-insensitive; HF/PaddleNLP repo ids accepted)."""
    key = _BY_LOWER.get(str(name).lower())
    if key is not None:
        return PRESETS[key]
    close = close_names(name)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"unknown model preset {name!r}: {hint}known presets: {', '.join(PRESETS)} "
                      "(`llmpre models` lists them), or pass a directory holding an HF config.json")
