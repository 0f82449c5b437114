"""EmotionNet's per-stage parameters, output shapes and FLOPs per image for a configuration
(`emotionnet-summary [--config RECIPE|YAML] [depth=4 input_size=96 ...]`).

FLOPs are counted by torch.utils.flop_counter (2 per multiply-add; convolutions, matmuls and
attention - elementwise ops, norms and activations are not counted).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from emotionnet.model.emotionnet import EmotionNet, ModelConfig

# CPU SDPA has no formula in torch's registry; it does the same work as the CUDA kernels.
_EXTRA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(
        q, k, v
    )
}


def stages(model: EmotionNet) -> dict[str, nn.Module | None]:
    """Named stages in forward order: each backbone block, then the later stages (None when off)."""
    named = {
        f"backbone.{i}" + (" (stem)" if i == 0 else ""): m for i, m in enumerate(model.backbone.features)
    }
    for name in ("channel_attention", "spatial_attention", "encoder", "head"):
        module = getattr(model, name)
        named[name] = module if not isinstance(module, nn.Identity) else None
    return named


def summarize(config: ModelConfig) -> str:
    model = EmotionNet(config).eval()
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: shapes.__setitem__(mod, tuple(out.shape)))
        for m in stages(model).values()
        if m is not None
    ]
    x = torch.zeros(1, 1, config.input_size, config.input_size)
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_EXTRA_FLOPS)
    # Grad mode on: eval + no_grad would route attention to fused fast paths the counter cannot see.
    with counter:
        model(x)
    for hook in hooks:
        hook.remove()
    counts = counter.get_flop_counts()
    module_names = {m: n for n, m in model.named_modules()}

    rows = [("stage", "output shape", "params", "MFLOPs")]
    for label, module in stages(model).items():
        if module is None:
            rows.append((label, "off", "0", "0"))
            continue
        flops = sum(counts.get(f"EmotionNet.{module_names[module]}", {}).values())
        params = sum(p.numel() for p in module.parameters())
        rows.append((label, str(shapes[module]), f"{params:,}", f"{flops / 1e6:.1f}"))
    total_params = sum(p.numel() for p in model.parameters())
    rows.append(
        ("total", str(shapes[model.head]), f"{total_params:,}", f"{counter.get_total_flops() / 1e6:.1f}")
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"EmotionNet {config}", ""]
    for i, row in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append(
            "  ".join(
                c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    lines.append(f"\nFLOPs per image: {counter.get_total_flops() / 1e9:.3f} GFLOPs (forward, batch 1)")
    return "\n".join(lines)
