"""Stage-1 SFT (``python -m srpo_mcore.sft``) on the synthetic visual task with SRPO-format targets.

- the loss mask is exactly the assistant turn of the chat template (token by token, with images),
  on hand-made rows and on the reflection builder's output;
- on the builder's output (tiny policy, template teacher), TP=2 equals TP=1 for the first steps
  (loss within 1e-5, exported weights within 1e-5);
- the loss falls on a tiny overfit run (last step < 40% of the first).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_fixtures import read_metrics, write_recipe


def _response(answer: str) -> str:
    return (
        f"<think> look at the image </think><answer> \\boxed{{{answer}}} </answer>"
        f"<reflection> the count is right </reflection><think> recount </think><answer> \\boxed{{{answer}}} </answer>"
    )


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    from srpo_mcore.data.synthetic import write_synthetic_task

    root = tmp_path_factory.mktemp("sft")
    paths = write_synthetic_task(root / "task", n_train=16, n_test=2, seed=0)
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    out = root / "task" / "sft.jsonl"
    out.write_text("".join(json.dumps({**r, "response": _response(r["answer"])}) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def built_set(sft_data, tiny_checkpoint) -> Path:
    """The reflection builder's own output (tiny policy, template teacher): what SFT trains on."""
    import subprocess

    import grpo_fixtures

    out = sft_data.parent.parent / "built"
    cmd = [
        sys.executable, "-m", "srpo_mcore.reflection.build", "--pool", str(sft_data.parent / "train.jsonl"),
        "--policy", str(tiny_checkpoint("gqa")), "--teacher", "template", "--out", str(out), "--size", "8",
        "--max-tokens", "16", "--max-model-len", "1024", "--dtype", "fp32", "--lenient-first", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=grpo_fixtures.ROOT, env=grpo_fixtures.train_env(), capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out / "sft.jsonl"


@pytest.mark.parametrize("source", ["synthetic", "built"])
def test_loss_mask_is_the_assistant_turn(source, request, tiny_checkpoint) -> None:
    sft_data = request.getfixturevalue("sft_data" if source == "synthetic" else "built_set")
    from transformers import AutoProcessor

    from srpo_mcore.config import DataConfig
    from srpo_mcore.data.rl_dataset import load_prompt_rows, open_images, user_content
    from srpo_mcore.data.system_prompts import system_prompt
    from srpo_mcore.rl.batch import collate
    from srpo_mcore.sft_trainer import sft_sequence

    processor = AutoProcessor.from_pretrained(tiny_checkpoint("gqa"))
    tok = processor.tokenizer
    rows, _ = load_prompt_rows(DataConfig(train_files=[str(sft_data)], answer_field="response"), progress=False)
    for row in rows[:3]:
        seq = sft_sequence(row, processor, "srpo")
        messages = [
            {"role": "system", "content": system_prompt("srpo")},
            {"role": "user", "content": user_content(row.question, len(row.images))},
            {"role": "assistant", "content": row.answer},
        ]
        text = tok.apply_chat_template(messages, tokenize=False)
        full = processor(text=[text], images=list(open_images(row)), return_tensors="pt")["input_ids"][0].tolist()
        assert full == list(seq.prompt_ids) + list(seq.response_ids) + tok("\n").input_ids, "sequence = chat template"
        assert tok.decode(seq.response_ids) == row.answer + tok.eos_token
        mb = collate([seq], [0], pad_id=tok.pad_token_id)
        trained = [int(t) for t, m in zip(mb.targets_BS[0], mb.loss_mask_BS[0]) if m > 0]
        assert trained == list(seq.response_ids), "loss exactly on the response and its end-of-turn token"


def _recipe(root: Path, data: Path, hf: Path, name: str, **sections) -> Path:
    recipe = {
        "name": name,
        "seed": 3,
        "output_dir": str(root / "runs"),
        "model": {"hf_dir": str(hf), "dtype": "fp32"},
        "data": {"train_files": [str(data)], "answer_field": "response", "prompt": "none"},
        "sft": {"batch_size": 8, "warmup_ratio": 0.1},
        "optim": {"lr": 1.0e-3, "decay": "cosine", "min_lr": 1.0e-4},
        "train": {"steps": 3, "save_every": 0, "export_hf_at_end": True},
        "logging": {"wandb_mode": "disabled", "plot_every": 0},
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    return write_recipe(root / f"{name}.yaml", recipe)


def _sft(recipe: Path, overrides: list[str] = (), nproc: int = 1) -> None:
    import grpo_fixtures

    command = grpo_fixtures.train_command(recipe, overrides, nproc)
    module = command.index("srpo_mcore.train")
    command[module] = "srpo_mcore.sft"
    import subprocess

    proc = subprocess.run(
        command, cwd=grpo_fixtures.ROOT, env=grpo_fixtures.train_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]


def test_tp2_equals_tp1(built_set, tiny_checkpoint, tmp_path) -> None:
    """SFT on the builder's set: TP=2 equals TP=1 for the first steps."""
    from safetensors.torch import load_file

    hf = Path(tiny_checkpoint("gqa"))
    runs = tmp_path / "runs"
    optim = {"lr": 2.0e-4, "min_lr": 2.0e-5}  # Adam moves weights by ~lr: layout noise stays far below 1e-5
    _sft(_recipe(tmp_path, built_set, hf, "tp1", optim=optim))
    _sft(_recipe(tmp_path, built_set, hf, "tp2", optim=optim), ["parallel.tp=2"], nproc=2)
    a, b = read_metrics(runs / "tp1"), read_metrics(runs / "tp2")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert abs(x["train/loss"] - y["train/loss"]) <= 1e-5, (x["train/loss"], y["train/loss"])
    wa, wb = load_file(runs / "tp1" / "hf" / "model.safetensors"), load_file(runs / "tp2" / "hf" / "model.safetensors")
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= 1e-5, f"TP2 weights differ from TP1 by {worst:.2e}"
    init = load_file(hf / "model.safetensors")
    vision = [k for k in init if k.startswith(("visual.", "model.visual."))]
    assert vision and all((wa[k] == init[k]).all() for k in vision), "the frozen vision tower did not move"


def test_loss_falls_on_overfit(sft_data, tiny_checkpoint, tmp_path) -> None:
    hf = Path(tiny_checkpoint("gqa"))
    fit = {"steps": 30, "export_hf_at_end": False}
    _sft(_recipe(tmp_path, sft_data, hf, "fit", train=fit, optim={"lr": 3.0e-3, "min_lr": 3.0e-4}))
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "runs" / "fit")]
    assert len(losses) == 30
    assert losses[-1] < 0.4 * losses[0], f"SFT loss {losses[0]:.3f} -> {losses[-1]:.3f}"
