"""Tensor, sequence and pipeline parallelism, recompute and sharding for the MoE and
latent-attention families: tiny Mixtral (softmax router, switch auxiliary loss),
Qwen2-MoE (shared expert with its sigmoid gate) and DeepSeek-V3-like (MLA with a
query bottleneck, sigmoid router with grouped bias-corrected choice (noaux_tc),
sequence-wise auxiliary loss, a dense first layer, one multi-token-prediction depth)
give the single-process losses (relative 1e-5 over five steps, auxiliary and MTP losses
included) and parameters (layout_runner.assert_same_weights) on gloo. Auxiliary-loss
coefficients are raised above the families' defaults so a wrong router gradient would show."""

from __future__ import annotations

import pytest

from layout_runner import (assert_same_losses, assert_same_weights, copy_checkpoint, losses, max_loss_deviation,
                           record, shared_run, train, weights, write_configs)

VOCAB = 8192   # the bundled corpus's token ids reach 8191
COMMON = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 64, "vocab_size": VOCAB,
          "hidden_act": "silu", "initializer_range": 0.02, "tie_word_embeddings": False, "bos_token_id": 1,
          "eos_token_id": 2, "pad_token_id": 0}
FAMILIES = {
    "mixtral": {
        **COMMON, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "num_hidden_layers": 2,
        "num_key_value_heads": 2, "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 1e6, "router_aux_loss_coef": 0.1},
    "qwen2_moe": {
        **COMMON, "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "num_hidden_layers": 2,
        "num_key_value_heads": 2, "intermediate_size": 64, "moe_intermediate_size": 32, "num_experts": 4,
        "num_experts_per_tok": 2, "shared_expert_intermediate_size": 48, "norm_topk_prob": False,
        "mlp_only_layers": [], "decoder_sparse_step": 1, "qkv_bias": True, "rms_norm_eps": 1e-6,
        "rope_theta": 1e6, "router_aux_loss_coef": 0.1},
    "deepseek_v3": {
        **COMMON, "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 4,
        "num_key_value_heads": 4, "intermediate_size": 64, "first_k_dense_replace": 1, "q_lora_rank": 16,
        "kv_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 12,
        "moe_intermediate_size": 32, "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2,
        "n_group": 2, "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "aux_loss_alpha": 0.1, "seq_aux": True, "num_nextn_predict_layers": 1, "rope_interleave": True,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
}
# The auxiliary losses are not additive over data ranks (each rank balances its own tokens, as in
# PaddleNLP and HF), so a layout with two data ranks is held to two plain data-parallel ranks.
REFERENCES = {"one process": (1, 1, []), "dp2": (2, 2, [])}
# The layout runs are layout_runner.shared_run's; DeepSeek-V3's tp2+sp run's checkpoint-3 is where
# test_a_tp2_sp_checkpoint_resumes_on_pp2_as_one_process starts.
SAVE_3 = ["--save_steps", "3"]
LAYOUTS = {   # name: (processes, data-parallel ranks, flags, reference)
    "tp2": (2, 1, ["--tp", "2"], "one process"),
    "tp2+sp": (2, 1, ["--tp", "2", "--sp", "true", *SAVE_3], "one process"),
    "pp2": (2, 1, ["--pp", "2"], "one process"),
    "recompute-full": (1, 1, ["--recompute", "true"], "one process"),
    "sharding2-stage3": (2, 2, ["--sharding", "stage3"], "dp2"),
    # only DeepSeek-V3 (4 layers: two chunks per pipeline rank; MLA under the attention recomputes)
    "pp2-interleaved": (2, 1, ["--pp", "2", "--vpp", "2"], "one process"),
    "tp2xpp2": (4, 1, ["--tp", "2", "--pp", "2"], "one process"),
    "recompute-full_attn": (1, 1, ["--recompute", "true", "--recompute_granularity", "full_attn"], "one process"),
    "recompute-core_attn": (1, 1, ["--recompute", "true", "--recompute_granularity", "core_attn"], "one process"),
}
# Every family on every layout but these (kept to about six minutes on two busy cores). Plain tp2
# differs from tp2+sp only where a tensor-parallel region is entered and left (copy_to / reduce_from
# instead of all-gather / reduce-scatter along the sequence in parallel.tensor_parallel and
# parallel.expert_tp; no gradient sums for replicated norms); what lies between (the experts'
# split, the router on the whole sequence with its auxiliary loss, the shared expert and Qwen2-MoE's
# shared gate, the qkv bias) is the same code in both. Mixtral's and Qwen2-MoE's tp2 entries and
# exits run here in DeepSeek-V3 tp2 (expert_tp's non-sp branch, a shared expert, an auxiliary loss)
# and in test_layouts.py tp2 on llama-tiny (the same Attention class with 4 query / 2 KV heads, the
# vocab-split embedding and head). Stage 3 is the same code for every family, and DeepSeek-V3's case
# is the hardest (MLA, a dense first layer, an untrained routing bias, MTP). Measured by hand
# besides: tp2 on Mixtral (1.0e-7) and Qwen2-MoE (0.0), tp2 x pp2 on Qwen2-MoE and sharding stage
# 2 against dp2 on Mixtral (0.0 each), and on DeepSeek-V3 with MTP tp2+sp with full recompute
# (8.0e-8) and tp2+sp x pp2 (7.9e-8).
SKIPPED = {("mixtral", "tp2"), ("qwen2_moe", "tp2"), ("mixtral", "sharding2-stage3"), ("qwen2_moe", "sharding2-stage3"),
           *((f, layout) for f in ("mixtral", "qwen2_moe")
             for layout in ("pp2-interleaved", "tp2xpp2", "recompute-full_attn", "recompute-core_attn"))}
CASES = [(f, layout) for f in FAMILIES for layout in LAYOUTS if (f, layout) not in SKIPPED]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return write_configs(tmp_path_factory.mktemp("moe"), FAMILIES)


@pytest.fixture(scope="module")
def references(tmp_path_factory, model_dirs):
    """Reference losses and weights of each family (REFERENCES), trained on first use."""
    cache = {}

    def get(family, reference):
        if (family, reference) not in cache:
            nproc, data_ranks, flags = REFERENCES[reference]
            out = tmp_path_factory.mktemp(f"{reference.replace(' ', '-')}-{family}")
            train(out, nproc, "--model", model_dirs[family], *flags, data_ranks=data_ranks)
            record(f"{family} {reference}", out, nproc)
            cache[family, reference] = losses(out), weights(out)
            config = FAMILIES[family]
            if config.get("num_nextn_predict_layers"):    # DeepSeek's name of the first MTP depth
                depth = f"model.layers.{config['num_hidden_layers']}.eh_proj.weight"
                assert depth in cache[family, reference][1], "the MTP depth was not trained and saved"
        return cache[family, reference]
    return get


@pytest.mark.parametrize("family,layout", CASES, ids=[f"{f}-{layout}" for f, layout in CASES])
def test_moe_layout_matches_one_process(tmp_path_factory, model_dirs, references, family, layout):
    nproc, data_ranks, flags, reference = LAYOUTS[layout]
    ref_losses, ref_weights = references(family, reference)
    run = shared_run(tmp_path_factory, nproc, "--model", model_dirs[family], *flags, data_ranks=data_ranks)
    got = losses(run)
    assert_same_losses(got, ref_losses)
    assert_same_weights(weights(run), ref_weights)
    record(f"{family} {layout}", run, nproc, loss_deviation=max_loss_deviation(got, ref_losses))


def test_expert_widths_that_do_not_split_over_tp_are_refused_before_training():
    """Each expert is split over the tensor-parallel ranks: its width (and the shared
    expert's) must divide by tp; one error naming the key, the width and the degree."""
    import dataclasses

    from llmpre.errors import ConfigError
    from llmpre.models import get_config
    from llmpre.parallel.dims import ParallelDims

    base = get_config("qwen1.5-moe-a2.7b")
    for key, width in (("moe_intermediate_size", 30), ("shared_expert_intermediate_size", 50)):
        config = base.replace(moe=dataclasses.replace(base.moe, **{key: width}))
        with pytest.raises(ConfigError, match=f"{key} {width} does not divide over tp 4 .* choose a tp that "
                                              f"divides {width}"):
            ParallelDims(tp=4).validate(4, config)
    ParallelDims(tp=4).validate(4, base)    # 1408 and 5632 split over 4


def test_a_tp2_sp_checkpoint_resumes_on_pp2_as_one_process(tmp_path, tmp_path_factory, model_dirs):
    """DeepSeek-V3-like (MLA, experts, routing bias, an MTP depth): three steps on tp2+sp save a
    checkpoint (experts and heads gathered from their slices), three more on pp2 read it back; the six
    steps equal six steps in one process. The first three are the tp2+sp layout test's run."""
    model = ["--model", model_dirs["deepseek_v3"]]
    single = tmp_path / "single"
    train(single, 1, *model, steps=6)
    run = tmp_path / "run"
    tp2sp = LAYOUTS["tp2+sp"]
    copy_checkpoint(shared_run(tmp_path_factory, tp2sp[0], *model, *tp2sp[2], data_ranks=tp2sp[1]), 3, run)
    resumed = train(run, 2, *model, "--pp", "2", "--save_steps", "3", steps=6)
    assert "at global_step 3" in resumed.output, resumed.output[-2000:]    # resumed, not restarted
    assert_same_losses(losses(run), losses(single))
    assert_same_weights(weights(run), weights(single))
