"""Tensor, sequence and pipeline parallelism for every dense family: tp2, tp2+sp and pp2
on tiny OPT (projected embeddings, post-norm), Bloom (ALiBi, embedding LayerNorm),
ChatGLM2 (one KV head for two ranks: replicated), GPT-2 (learned positions, with
PaddleNLP's default dropout 0.1) and ChatGLM-6B (GLM v1: 2-D positions and prefix
attention derived from the tokens) give the single-process losses (relative 1e-5 over
five steps) and parameters (layout_runner.assert_same_weights) on gloo."""

from __future__ import annotations


import pytest

from layout_runner import (assert_same_losses, assert_same_weights, losses, max_loss_deviation, record, train,
                           weights, write_configs)

VOCAB = 8192   # the bundled corpus's token ids reach 8191
# HF config.json of each tiny model (4 layers, hidden 64, 4 heads); from-scratch runs need no weights
FAMILIES = {
    "opt-projected": {
        "architectures": ["OPTForCausalLM"], "model_type": "opt", "activation_function": "relu",
        "do_layer_norm_before": False, "_remove_final_layer_norm": False, "hidden_size": 64,
        "word_embed_proj_dim": 32, "ffn_dim": 128, "num_attention_heads": 4, "num_hidden_layers": 4,
        "max_position_embeddings": 64, "vocab_size": VOCAB, "tie_word_embeddings": True, "enable_bias": True,
        "layer_norm_elementwise_affine": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "init_std": 0.02},
    "bloom": {
        "architectures": ["BloomForCausalLM"], "model_type": "bloom", "hidden_size": 64, "n_head": 4,
        "n_layer": 4, "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "tie_word_embeddings": True, "apply_residual_connection_post_layernorm": False, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0},
    "chatglm2": {
        "architectures": ["ChatGLMModel"], "model_type": "chatglm", "hidden_size": 64, "ffn_hidden_size": 128,
        "num_layers": 4, "num_attention_heads": 4, "kv_channels": 16, "multi_query_attention": True,
        "multi_query_group_num": 1, "padded_vocab_size": VOCAB, "seq_length": 64, "layernorm_epsilon": 1e-5,
        "rmsnorm": True, "add_qkv_bias": True, "add_bias_linear": False, "post_layer_norm": True,
        "apply_residual_connection_post_layernorm": False, "eos_token_id": 2},
    "gpt2": {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "n_embd": 64, "n_head": 4, "n_layer": 4, "n_positions": 64, "vocab_size": VOCAB,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2},
    # <sop>, [gMASK], [MASK] are frequent corpus tokens (in 59%, 49%, 38% of the windows), so samples
    # take GLM's prefix attention and 2-D positions at varying places, on every pipeline stage
    "chatglm-6b": {
        "architectures": ["ChatGLMModel"], "model_type": "chatglm", "hidden_size": 64, "inner_hidden_size": 128,
        "num_layers": 4, "num_attention_heads": 4, "vocab_size": VOCAB, "position_encoding_2d": True,
        "bos_token_id": 267, "gmask_token_id": 199, "mask_token_id": 259, "eos_token_id": 2,
        "max_sequence_length": 64, "layernorm_epsilon": 1e-5},
}
LAYOUTS = {"tp2": ["--tp", "2"], "tp2+sp": ["--tp", "2", "--sp", "true"], "pp2": ["--pp", "2"]}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return write_configs(tmp_path_factory.mktemp("families"), FAMILIES)


@pytest.fixture(scope="module")
def references(tmp_path_factory, model_dirs):
    """One-process losses and weights of each family, trained on first use."""
    cache = {}

    def get(family):
        if family not in cache:
            out = tmp_path_factory.mktemp(f"single-{family}")
            train(out, 1, "--model", model_dirs[family])
            record(f"{family} single process", out, 1)
            cache[family] = losses(out), weights(out)
        return cache[family]
    return get


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_layout_matches_one_process(tmp_path, model_dirs, references, family, layout):
    ref_losses, ref_weights = references(family)
    train(tmp_path, 2, "--model", model_dirs[family], *LAYOUTS[layout])
    got = losses(tmp_path)
    assert_same_losses(got, ref_losses)
    assert_same_weights(weights(tmp_path), ref_weights)
    record(f"{family} {layout}", tmp_path, 2, loss_deviation=max_loss_deviation(got, ref_losses))
