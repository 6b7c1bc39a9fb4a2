"""Recipes load strictly: every broken field is named, overrides apply, the layout is validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from srpo_mcore.config import ConfigError, RunConfig, apply_override, load_config, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


DEMO_RECIPES = {"srpo_tiny_cpu.yaml"}


def test_defaults_and_shipped_recipes_are_valid() -> None:
    assert load_config() == RunConfig()
    recipes = sorted(EXAMPLES.glob("*.yaml"))
    assert recipes, "examples/ ships at least one recipe"
    for recipe in recipes:
        if recipe.name in DEMO_RECIPES:  # the laptop demo's one-file recipe: a trainer recipe per stage
            from srpo_mcore.demo.config import load_demo_config

            load_demo_config(recipe)
        else:
            load_config(recipe)


def test_overrides_parse_yaml_scalars(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "parallel:\n  tp: 1\n"),
        ["parallel.tp=2", "reward.alpha=0.2", "reward.variant=official", "parallel.vpp=null", "name=x"],
    )
    assert cfg.parallel.tp == 2 and cfg.reward.alpha == 0.2 and cfg.reward.variant == "official"
    assert cfg.parallel.vpp is None and cfg.name == "x"


@pytest.mark.parametrize(
    "recipe, overrides, expected",
    [
        (
            "parallel:\n  tensor_parallel: 2\n",
            [],
            r"parallel\.tensor_parallel: unknown field.*fields of ParallelConfig",
        ),
        ("parallel:\n  tpp: 2\n", [], r"did you mean 'tp'"),
        ("parallel:\n  tp: two\n", [], r"parallel\.tp: expected an integer, got 'two'"),
        ("parallel:\n  tp: true\n", [], r"parallel\.tp: expected an integer"),
        (
            "reward:\n  variant: papr\n",
            [],
            r"reward\.variant: 'papr' is not allowed; allowed values: 'paper', 'official', 'grpo'",
        ),
        ("model:\n  dtype: int8\n", [], r"model\.dtype.*allowed values: 'fp32', 'bf16', 'fp16'"),
        (
            "parallel:\n  tp: 3\n",
            [],
            r"parallel\.tp=3 does not divide model\.num_attention_heads=4; allowed tp values: \[1, 2\]",
        ),
        ("model:\n  num_layers: 3\nparallel:\n  pp: 2\n", [], r"model\.num_layers=3 is not divisible by pp\*vpp"),
        ("parallel:\n  sequence_parallel: true\n", [], r"sequence_parallel=true needs parallel\.tp > 1"),
        ("reward:\n  max_length_factor: 1.5\n", [], r"reward\.max_length_factor \(1\.5\) must be greater"),
        ("- a\n- b\n", [], r"a recipe must be a mapping"),
        ("parallel: [1\n", [], r"not valid YAML"),
        ("", ["parallel"], r"expected KEY=VALUE"),
        ("", ["parallel.tp.x=1"], r"parallel\.tp is not a section|parallel\.tp: expected"),
        ("", ["model=3"], r"model: expected a mapping of fields"),
    ],
)
def test_broken_recipes_name_the_field(tmp_path: Path, recipe: str, overrides: list[str], expected: str) -> None:
    path = write(tmp_path, recipe)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(path, overrides)
    if "mapping" not in expected and "YAML" not in expected and "KEY" not in expected:
        assert str(path) in str(err.value), "the message names the recipe file"


def test_all_layout_problems_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "model:\n  num_layers: 3\nparallel:\n  tp: 3\n  pp: 2\n"))
    msg = str(err.value)
    assert "parallel.tp=3" in msg and "model.num_layers=3" in msg


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_config(tmp_path / "nope.yaml")


def test_apply_override_creates_sections() -> None:
    data: dict = {}
    apply_override(data, "reward.alpha=0.3")
    assert data == {"reward": {"alpha": 0.3}}


def test_cli_prints_resolved_config_and_fails_cleanly(capsys, tmp_path: Path) -> None:
    assert main(["--set", "parallel.tp=2"]) == 0
    assert "tp: 2" in capsys.readouterr().out
    assert main(["--config", str(write(tmp_path, "bogus: 1\n"))]) == 2
    assert "bogus: unknown field" in capsys.readouterr().out


def test_layout_is_checked_against_the_named_model(tmp_path: Path, tiny_checkpoint) -> None:
    with pytest.raises(ConfigError, match=r"parallel\.tp=8 does not divide model\.num_query_groups=4.*\(preset 7b\)"):
        load_config(None, ["model.preset=7b", "parallel.tp=8"])
    load_config(None, ["model.preset=7b", "parallel.tp=4"])  # 28 heads, 4 groups
    hf = tiny_checkpoint("gqa")  # 4 heads, 2 groups, 2 layers
    with pytest.raises(
        ConfigError, match=r"model\.num_layers=2 is not divisible by pp\*vpp = 4\*1 = 4 \(from .*config\.json\)"
    ):
        load_config(None, [f"model.hf_dir={hf}", "parallel.pp=4"])
    with pytest.raises(ConfigError, match=r"model\.hf_dir: cannot read"):
        load_config(None, [f"model.hf_dir={tmp_path}"])


def test_rollout_tp_must_divide_heads_and_world() -> None:
    cfg = load_config(None, ["model.preset=32b", "parallel.tp=8", "parallel.pp=2", "parallel.rollout_tp=4"])
    cfg.validate(world_size=32)  # 8 engines of 4 ranks
    cfg = load_config(None, ["model.preset=32b", "parallel.tp=2", "parallel.rollout_tp=4"])
    with pytest.raises(ConfigError, match=r"parallel\.rollout_tp \(4\) must divide the world size \(6\)"):
        cfg.validate(world_size=6)  # a fine trainer layout (DP=3), but 6 GPUs do not split into engines of 4
    with pytest.raises(ConfigError, match=r"parallel\.rollout_tp \(3\) must be >= 1 and divide the 40 attention heads"):
        load_config(None, ["model.preset=32b", "parallel.rollout_tp=3"])
