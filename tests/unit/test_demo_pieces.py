"""The laptop demo's pure pieces: its recipe (strict, errors by dotted field), stage 0's targets, the
synthetic task as an evaluation benchmark, and ``--set`` numbers in scientific notation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srpo_mcore.config import ConfigError, load_config
from srpo_mcore.data.synthetic import generate_items, write_synthetic_task
from srpo_mcore.demo.config import load_demo_config
from srpo_mcore.demo.instruct import instruct_response
from srpo_mcore.eval.benchmarks import EvalDataError, load_items, parse_benchmarks
from srpo_mcore.eval.run import score_response
from srpo_mcore.rl.rewards.format import parse_response

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "srpo_tiny_cpu.yaml"


def test_recipe_loads_with_overrides() -> None:
    cfg = load_demo_config(RECIPE, ["grpo.optim.lr=3e-5", "data.n_rl=64", "grpo.train.steps=2"])
    grpo = cfg.stage("grpo")
    assert grpo.optim.lr == 3e-5 and cfg.data.n_rl == 64 and grpo.train.steps == 2
    assert cfg.stage("sft").data.answer_field == "response" and grpo.parallel.tp == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grpo.optim.lr=fast", "grpo.optim.lr: expected a number"),
        ("sft.optim.lrr=1", "sft.optim.lrr: unknown field (did you mean 'lr'?)"),
        ("grpo.model.hf_dir=/x", "grpo.model.hf_dir is set by the pipeline"),
        ("reflection.size=10000", "reflection.size (10000) must be in [1, data.n_pool=512]"),
        ("nproc=3", "instruct: invalid config:\n  - world size 3 is not divisible by tp*pp*cp"),
        ("polcy=demo", "polcy: unknown field (did you mean 'policy'?)"),
    ],
)
def test_recipe_errors_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_demo_config(RECIPE, [override])
    assert message in str(e.value) and str(RECIPE) in str(e.value)


def test_scientific_notation_override_is_a_number() -> None:
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    assert load_config(None, ["optim.lr=2.5E-6"]).optim.lr == 2.5e-6
    assert load_config(None, ["name=1e5x"]).name == "1e5x"  # not a number: stays a string


def test_instruct_targets_are_plain_format_with_the_gold() -> None:
    items = generate_items(30, seed=3, split="train")
    for it in items:
        response = instruct_response(it)
        parsed = parse_response(response)
        assert parsed.is_grpo_format, response
        assert f"\\boxed{{{it.answer}}}" in response
    counts = {it.task: instruct_response(it) for it in items}
    assert "circles" in counts["count"] or "squares" in counts["count"] or "triangles" in counts["count"]


def test_synthetic_benchmark(tmp_path: Path) -> None:
    write_synthetic_task(tmp_path / "synthetic", n_train=3, n_test=9, seed=1)
    assert parse_benchmarks("synthetic") == [("synthetic", "test")]
    items = load_items("synthetic", "test", tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "synthetic" / "test.jsonl").read_text().splitlines()]
    assert [i.id for i in items] == [r["id"] for r in rows]
    assert [i.category for i in items] == [r["task"] for r in rows]
    for item, row in zip(items, rows):
        assert item.gold == row["answer"] and item.images[0][:8] == b"\x89PNG\r\n\x1a\n"
        assert item.answer_type == ("choice" if row["answer"] in "ABCD" else "integer")
        assert score_response(item, f"<answer> \\boxed{{{row['answer']}}} </answer>")[1].correct
        assert not score_response(item, "<answer> \\boxed{99} </answer>")[1].correct
    assert len(load_items("synthetic", "train", tmp_path)) == 3


def test_synthetic_benchmark_bad_line(tmp_path: Path) -> None:
    write_synthetic_task(tmp_path / "synthetic", n_train=1, n_test=2, seed=1)
    path = tmp_path / "synthetic" / "test.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(EvalDataError, match=r"test.jsonl: line 3 is not valid JSON"):
        load_items("synthetic", "test", tmp_path)
    lines = path.read_text().splitlines()[:2]
    row = json.loads(lines[1])
    row["images"] = ["images/missing.png"]
    path.write_text(lines[0] + "\n" + json.dumps(row) + "\n")
    with pytest.raises(EvalDataError, match=r"row 1 .*column 'images' image file .*missing.png does not exist"):
        load_items("synthetic", "test", tmp_path)


def test_continuing_a_run_with_another_recipe_is_refused(tmp_path: Path) -> None:
    import yaml

    from srpo_mcore.config import to_dict
    from srpo_mcore.demo.pipeline import DemoPipeline, StageError

    first = load_demo_config(RECIPE, [f"output_dir={tmp_path}"])
    run_dir = first.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(to_dict(first)))
    DemoPipeline(first)._check_same_recipe()  # the same recipe continues
    other = load_demo_config(RECIPE, [f"output_dir={tmp_path}", "grpo.optim.lr=3e-5", "data.n_rl=64"])
    with pytest.raises(StageError, match=r"another recipe \(data.n_rl: 512 -> 64, grpo.optim.lr: 0.0001 -> 3e-05\)"):
        DemoPipeline(other)._check_same_recipe()
