"""``llmpre models``: the named presets (every architecture of PaddleNLP's weight table)."""

from __future__ import annotations

import json

import click


def _features(cfg) -> str:
    parts = []
    if cfg.moe is not None:
        m = cfg.moe
        parts.append(f"MoE {m.num_experts}x top-{m.num_experts_per_tok}"
                     + (" +shared" if m.shared_expert_intermediate_size else ""))
    if cfg.mla is not None:
        parts.append("MLA")
    if cfg.glm is not None:
        parts.append("GLM 2-D positions" if cfg.glm.position_2d else "GLM, GeGLU, DeepNorm")
    if cfg.position != "rope":
        parts.append({"alibi": "ALiBi", "learned": "learned pos"}[cfg.position])
    if cfg.sliding_window:
        parts.append(f"window {cfg.sliding_window}")
    if cfg.num_key_value_heads != cfg.num_attention_heads:
        parts.append("MQA" if cfg.num_key_value_heads == 1 else "GQA")
    if cfg.rope_scaling is not None:
        parts.append(f"rope {cfg.rope_scaling.rope_type}")
    if cfg.tie_word_embeddings:
        parts.append("tied")
    return ", ".join(parts)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


@click.command()
@click.argument("name", required=False)
@click.option("--family", default=None, help="Only presets of this model_type (llama, qwen2, mixtral, ...).")
@click.option("--aliases", is_flag=True, help="Also list the hub names (HF / PaddleNLP) each preset answers to.")
def models(name, family, aliases):
    """List model presets with their sizes (parameters computed from the config, equal to
    the built model's).  With NAME (a preset or hub id), print that model's HF config.json."""
    from llmpre.models.hf_config import to_hf_dict
    from llmpre.models.presets import ALIASES, PRESETS, get_preset

    names_of = {}
    for repo, preset in ALIASES.items():
        names_of.setdefault(preset, []).append(repo)
    if name is not None:
        cfg = get_preset(name)
        preset = next(k for k, v in PRESETS.items() if v is cfg)
        click.echo(f"{preset}: {cfg.num_parameters():,} parameters ({cfg.model_type})")
        if names_of.get(preset):
            click.echo("also: " + ", ".join(names_of[preset]))
        click.echo(json.dumps(to_hf_dict(cfg), indent=2, sort_keys=True))
        return
    click.echo(f"{'name':<30} {'type':<12} {'params':>9} {'layers':>6} {'hidden':>6} {'heads':>5} {'kv':>4} "
               f"{'vocab':>7}  features")
    for preset, cfg in PRESETS.items():
        if family is not None and cfg.model_type != family:
            continue
        click.echo(f"{preset:<30} {cfg.model_type:<12} {_size(cfg.num_parameters()):>9} {cfg.num_hidden_layers:>6} "
                   f"{cfg.hidden_size:>6} {cfg.num_attention_heads:>5} {cfg.num_key_value_heads:>4} "
                   f"{cfg.vocab_size:>7}  {_features(cfg)}")
        if aliases and names_of.get(preset):
            click.echo(f"{'':<30} = " + ", ".join(names_of[preset]))
