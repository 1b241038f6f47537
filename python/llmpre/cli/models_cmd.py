"""``llmpre models``: the named presets."""

from __future__ import annotations

import click


@click.command()
def models():
    """List model presets with their sizes (parameters computed from the config)."""
    from llmpre.models.presets import PRESETS

    click.echo(f"{'name':<24} {'params':>10} {'layers':>6} {'hidden':>6} {'heads':>5} {'kv':>3} {'vocab':>7}")
    for name, cfg in PRESETS.items():
        n = cfg.num_parameters()
        size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
        click.echo(f"{name:<24} {size:>10} {cfg.num_hidden_layers:>6} {cfg.hidden_size:>6} "
                   f"{cfg.num_attention_heads:>5} {cfg.num_key_value_heads:>3} {cfg.vocab_size:>7}")
