"""The planner's parameter counts equal HF transformers' for every preset (models built on the meta
device), and its CLI prints a ranked table for the GPU recipes. (Its activation and optimizer bytes
against what the tiny model really holds: tests/dist/test_plan_memory.py.)"""

from __future__ import annotations

import pytest
import torch

from srpo_mcore.models.qwen2_5_vl.config import PRESETS
from srpo_mcore.plan import count_params, main


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_param_counts_equal_hf(preset: str) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    arch = PRESETS[preset]
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration(arch.to_hf())
    vision = sum(p.numel() for n, p in hf.named_parameters() if ".visual." in f".{n}")
    total = sum(p.numel() for p in hf.parameters())
    c = count_params(arch)
    assert (c.total, c.vision, c.language) == (total, vision, total - vision)
    layer = sum(p.numel() for n, p in hf.named_parameters() if n.startswith("model.language_model.layers.0."))
    assert c.per_layer == layer


@pytest.mark.parametrize(
    ("recipe", "args", "recipe_row"),
    [
        ("examples/grpo_7b.yaml", ["--set", "model.preset=7b"], "TP2 PP1 CP1 DP4 (recipe)"),
        ("examples/grpo_32b.yaml", ["--gpus", "32"], "TP8 PP2 CP1 DP2 (recipe)"),
    ],
)
def test_cli_ranks_layouts_and_the_recipe_fits(recipe: str, args: list[str], recipe_row: str, capsys) -> None:
    assert main(["--config", recipe, *args]) == 0
    out = capsys.readouterr().out
    assert "vLLM engine per GPU: 28.0 GB" in out and "NO ROOM" not in out, out
    rows = [line for line in out.splitlines() if line.startswith("| TP")]
    assert len(rows) > 3
    mine = next(line for line in rows if recipe_row in line)
    assert mine.split("|")[-3].strip() == "yes", f"the recipe's own layout does not fit: {mine}"
    fits = [line.split("|")[-3].strip() for line in rows]
    assert fits == sorted(fits, key=lambda x: x != "yes"), "layouts that fit come first"


def test_engine_weights_and_kv_cache() -> None:
    """The engine's weights (FP8 linears under rollout.precision=fp8) at rollout_tp, and the KV cache left."""
    from srpo_mcore.config import load_config
    from srpo_mcore.plan import plan_layout

    arch = PRESETS["32b"]
    c = count_params(arch)
    kw = dict(tp=8, pp=2, gpus=32, gpu_memory_gb=80, tokens_per_step=1e6)
    bf16 = plan_layout(load_config("examples/grpo_32b.yaml"), arch, **kw)
    assert bf16.engine_weights == 2 * c.total / 4 and bf16.kv_cache == 0.35 * 80e9 - bf16.engine_weights
    fp8 = plan_layout(load_config("examples/grpo_32b.yaml", ["rollout.precision=fp8"]), arch, **kw)
    linear = c.layer_linear * c.layers
    assert fp8.engine_weights == (2 * (c.total - linear) + linear) / 4 < bf16.engine_weights
