"""SRPO stage 2: GRPO with the reflection-aware reward on Megatron-Core.

``python -m srpo_mcore.train --config RECIPE.yaml [--set k=v ...]`` (under torchrun or srun; one
process per device, SPMD). Every step reads like the algorithm:

    prompts -> rollout (vLLM, colocated) -> reward -> group advantages + accuracy filter
            -> behaviour logprobs (and reference logprobs when grpo.kl_coef > 0)
            -> clipped policy update (Megatron schedule + optimizer) -> weight refit into vLLM
            -> metrics, plots, checkpoint

Owns the loop and its lifecycle: setup from the config, resume from the run directory's latest
checkpoint (model, optimizer, lr schedule, data position, RNG; the engine is refitted with the
restored weights and the metrics file cut back to the checkpoint), SIGTERM (finish the step, save,
exit 0), and the HF export at the end.

The run directory is ``<output_dir>/<name>/``: ``config.yaml``, ``metrics.jsonl``, ``plots/``,
``checkpoints/``, ``wandb/``, ``rollouts/`` (with ``rollout.save_rollouts``), ``hf/`` (final export).

Does not own: any of the pieces it calls (data, rollout, rewards, batching, loss, optimizer, checkpoints).
"""

from __future__ import annotations

import argparse
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from srpo_mcore.config import ConfigError, RunConfig, add_config_args, config_from_args, to_dict
from srpo_mcore.observe.rank0_log import get_logger

log = get_logger("srpo_mcore.train")


class _Stop:
    """SIGTERM arrived: finish the current step, save, exit."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(signum: int, frame: Any) -> None:
            cls.requested = True

        signal.signal(signal.SIGTERM, handler)

    @classmethod
    def agreed(cls) -> bool:
        """Whether any rank got SIGTERM (collective)."""
        flag = torch.tensor([1.0 if cls.requested else 0.0])
        if dist.is_initialized():
            if dist.get_backend() == "nccl":
                flag = flag.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class GRPOTrainer:
    """One SRPO/GRPO run on this rank (construct on every rank; collective)."""

    def __init__(self, cfg: RunConfig) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core import tensor_parallel
        from transformers import AutoProcessor

        from srpo_mcore.checkpoint.load_hf import load_hf_weights
        from srpo_mcore.checkpoint.train_state import TrainCheckpointer
        from srpo_mcore.data.prompt_sampler import PromptSampler
        from srpo_mcore.models.qwen2_5_vl.model import Qwen25VLModel, arch_from_config, layout_from_config
        from srpo_mcore.observe.metrics_log import MetricsLog
        from srpo_mcore.observe.wandb_run import WandbRun
        from srpo_mcore.parallel.dims import ParallelDims
        from srpo_mcore.parallel.setup import init_parallel
        from srpo_mcore.rl.optim import build_optimizer, prepare_for_training
        from srpo_mcore.rl.rewards import RewardScorer

        if not cfg.model.hf_dir:
            raise ConfigError("model.hf_dir: the run starts from an HF Qwen2.5-VL checkpoint; set its directory")
        self.cfg = cfg
        p = cfg.parallel
        self.dims = ParallelDims(tp=p.tp, pp=p.pp, cp=p.cp, vpp=p.vpp, sequence_parallel=p.sequence_parallel)
        self.env = init_parallel(self.dims, backend=p.backend)
        self.rank0 = self.env.rank == 0
        torch.manual_seed(cfg.seed)
        tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
        self.run_dir = Path(cfg.output_dir) / cfg.name
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.hf_dir = cfg.model.hf_dir

        # Policy (and the frozen reference only when the KL term is on).
        self.arch = arch_from_config(cfg.model)
        self.layout = layout_from_config(cfg.model, p)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        self.model = self._build_model(Qwen25VLModel, load_hf_weights)
        self.ddp = prepare_for_training(self.model, cfg.optim)
        self.ref_model = None
        if cfg.grpo.kl_coef > 0:
            self.ref_model = self._build_model(Qwen25VLModel, load_hf_weights)
            self.ref_model.requires_grad_(False)
            self.ref_model.config.variable_seq_lengths = True

        # Data.
        self.processor = AutoProcessor.from_pretrained(self.hf_dir)
        self.tokenizer = self.processor.tokenizer
        self.rows = self._load_rows()
        self.sampler = PromptSampler(len(self.rows), seed=cfg.seed, shuffle=cfg.data.shuffle)
        per_step = cfg.data.prompts_per_step
        self.total_steps = cfg.train.steps or cfg.train.episodes * math.ceil(len(self.rows) / per_step)
        self.optimizer, self.scheduler = build_optimizer(
            self.ddp, cfg.optim, dtype=cfg.model.dtype, total_steps=self.total_steps
        )
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        tp_sp = p.tp if p.sequence_parallel else 1
        self.pad_multiple = (2 * p.cp if p.cp > 1 else 1) * tp_sp

        # Rollout, reward, bookkeeping.
        self.engine = self._build_engine()
        self.scorer = RewardScorer(
            cfg.reward,
            count_tokens=lambda xs: [len(ids) for ids in self.tokenizer(xs, add_special_tokens=False).input_ids],
        )
        self.metrics = MetricsLog(self.run_dir, enabled=self.rank0)
        self.checkpointer = TrainCheckpointer(self.run_dir / "checkpoints", keep_last=cfg.train.keep_last)
        self.step = 0
        self._resume()
        self.wandb = WandbRun(self.run_dir, cfg.logging, name=cfg.name, config=to_dict(cfg), enabled=self.rank0)
        self._prompt_cache: dict[int, Any] = {}

    # -- setup --------------------------------------------------------------------------------

    def _build_model(self, model_cls: Any, load: Any) -> Any:
        model = model_cls(self.arch, self.layout)
        if self.device is not None:
            model.to(self.device)
        load(model, self.hf_dir, progress=self.rank0)
        return model

    def _load_rows(self) -> list[Any]:
        from srpo_mcore.data.rl_dataset import load_prompt_rows

        box: list[Any] = [None]
        if self.rank0:  # validated once (images opened), then shared
            rows, report = load_prompt_rows(self.cfg.data, progress=True, processor=self.processor)
            log.info("%s", report.summary())
            box = [rows]
        if dist.is_initialized():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def _build_engine(self) -> Any:
        ro = self.cfg.rollout
        if ro.replay_dir:
            from srpo_mcore.rollout.replay import ReplaySource

            log.info("replay mode: training from the rollouts saved in %s (no vLLM)", ro.replay_dir)
            return ReplaySource(ro.replay_dir)
        from srpo_mcore.rollout.engine import RolloutEngine

        return RolloutEngine(
            self.hf_dir, ro, dtype=self.cfg.model.dtype, seed=self.cfg.seed, rollout_tp=self.cfg.parallel.rollout_tp
        )

    def _resume(self) -> None:
        latest = self.checkpointer.latest() if self.cfg.train.resume else None
        if latest is None:
            return
        state = self.checkpointer.load(latest, self.model, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load(state["data"])
        self.step = int(state["step"])
        self.metrics.truncate_after(self.step)
        self._refit()
        log.info("resumed from %s at step %d", latest, self.step)

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
            golds_by_id = {r.id: r.answer for r in self.rows}
            golds = [golds_by_id[req.key] for req in requests]
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
                self.engine, self.scorer, requests, golds, seeds=seeds, shared_engine=self.engine.spans_world
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

    def _micro_batches(self, sequences: Sequence[Any], index: Sequence[int]) -> list[Any]:
        from srpo_mcore.rl.batch import collate, plan_micro_batches

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        empty = not index
        if empty:  # this rank has nothing to train on: one weightless micro-batch keeps the collectives in step
            index = [0]
        plan = plan_micro_batches(
            [len(sequences[i]) for i in index], self.cfg.train.micro_batch_tokens, self.pad_multiple
        )
        mbs = [
            collate(
                sequences,
                [index[j] for j in part],
                pad_id=pad_id,
                pad_multiple=self.pad_multiple,
                aggregation=self.cfg.grpo.aggregation,
            )
            for part in plan
        ]
        for mb in mbs:
            if empty:
                mb.loss_mask_BS.zero_()
                mb.token_weight_BS.zero_()
            if self.device is not None:
                mb.to(self.device)
        return mbs

    def _update(self, sequences: Sequence[Any], timings: dict[str, float]) -> dict[str, float]:
        """Behaviour (+ reference) logprobs, then ``train.updates_per_step`` optimizer updates."""
        from srpo_mcore.rl.batch import shard_for_dp
        from srpo_mcore.rl.optim import current_lr
        from srpo_mcore.rl.policy_step import forward_logprobs, train_step

        cfg = self.cfg
        temperature = cfg.rollout.temperature if cfg.rollout.logprobs_mode == "processed_logprobs" else 1.0
        mine = shard_for_dp(sequences, self.dp_rank, self.dp_size)
        k = cfg.train.updates_per_step
        minis = [self._micro_batches(sequences, mine[i::k]) for i in range(k)]
        start = time.perf_counter()
        gap = forward_logprobs(
            [self.ddp], [mb for m in minis for mb in m], name="old_logprobs", temperature=temperature
        )
        if self.ref_model is not None:
            forward_logprobs(
                [self.ref_model], [mb for m in minis for mb in m], name="ref_logprobs", temperature=temperature
            )
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
        tokens = sum(len(s) for s in sequences)
        out["perf/train_tokens_per_s"] = tokens * 2 / max(timings["train_s"] + timings["logprobs_s"], 1e-9)
        return out

    def _refit(self) -> float:
        if self.cfg.rollout.replay_dir:
            return 0.0
        from srpo_mcore.rollout.refit import iter_hf_weights

        start = time.perf_counter()
        self.engine.wake_up()
        weights = iter_hf_weights(
            self.model,
            bucket_bytes=self.cfg.rollout.refit_bucket_mb * 2**20,
            include_vision=not self.cfg.model.freeze_vision,
        )
        self.engine.update_weights(weights)
        return time.perf_counter() - start

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
        timings["step_s"] = time.perf_counter() - t0
        metrics.update({f"time/{k}": v for k, v in timings.items()})
        metrics["train/step"] = float(step)
        return metrics

    # -- the loop -----------------------------------------------------------------------------

    def save(self) -> None:
        start = time.perf_counter()
        state = {"scheduler": self.scheduler.state_dict(), "data": self.sampler.state(), "seed": self.cfg.seed}
        from srpo_mcore.checkpoint.convert import describe_checkpoint

        p = self.cfg.parallel

        def describe(tmp: Path) -> None:
            describe_checkpoint(tmp, self.arch, dtype=self.cfg.model.dtype, tp=p.tp, pp=p.pp, hf_source=self.hf_dir)

        path = self.checkpointer.save(self.step, self.model, self.optimizer, state, describe=describe)
        log.info("saved %s (%.1f s)", path, time.perf_counter() - start)

    def run(self) -> int:
        """Train until ``total_steps`` (or SIGTERM); returns the process exit code."""
        from tqdm import tqdm

        from srpo_mcore.observe.plots import write_plots

        cfg = self.cfg
        _Stop.install()
        log.info(
            "GRPO: %d prompts, %d steps (from %d), world=%d tp=%d pp=%d cp=%d dp=%d, run dir %s",
            len(self.rows), self.total_steps, self.step, self.env.world_size, cfg.parallel.tp,
            cfg.parallel.pp, cfg.parallel.cp, self.dp_size, self.run_dir,
        )  # fmt: skip
        bar = tqdm(total=self.total_steps, initial=self.step, desc="grpo", unit="step", disable=not self.rank0)
        saved_at = self.step
        while self.step < self.total_steps:
            metrics = self.train_one_step()
            if self.step % cfg.logging.log_every == 0 or self.step == self.total_steps:
                self.metrics.log(self.step, metrics)
                self.wandb.log(self.step, metrics)
            bar.update(1)
            bar.set_postfix(
                reward=f"{metrics['reward/total_mean']:.3f}",
                acc=f"{metrics['reward/last_accuracy']:.2f}",
                loss=f"{metrics.get('train/loss', float('nan')):.4f}",
            )
            if self.rank0 and cfg.logging.plot_every and self.step % cfg.logging.plot_every == 0:
                write_plots(self.run_dir)
            stop = _Stop.agreed()
            if stop or (cfg.train.save_every and self.step % cfg.train.save_every == 0):
                self.save()
                saved_at = self.step
            if stop:
                log.warning("SIGTERM: saved at step %d; exiting (resume continues from here)", self.step)
                bar.close()
                return 0
        bar.close()
        if saved_at != self.step:
            self.save()
        if cfg.train.export_hf_at_end:
            self.export_hf(self.run_dir / "hf")
        if self.rank0:
            write_plots(self.run_dir)
        return 0

    def export_hf(self, out: Path) -> None:
        """Write the current policy as an HF checkpoint (collective; rank 0 writes)."""
        from srpo_mcore.checkpoint.hf_export import write_hf_checkpoint
        from srpo_mcore.rollout.refit import iter_hf_weights

        weights = iter_hf_weights(self.model)
        if self.rank0:
            write_hf_checkpoint(weights, self.arch, out, source_dir=self.hf_dir, force=True)
            log.info("exported the policy to %s", out)
        else:
            for _ in weights:
                pass
        if dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        from srpo_mcore.parallel.setup import destroy_parallel

        self.wandb.finish()
        self.scorer.close()
        if hasattr(self.engine, "close"):
            self.engine.close()
        destroy_parallel()


def main(argv: Sequence[str] | None = None) -> int:
    """Run SRPO stage 2 (GRPO with the reflection reward) from a recipe."""
    parser = argparse.ArgumentParser(prog="python -m srpo_mcore.train", description=main.__doc__)
    add_config_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        trainer = GRPOTrainer(cfg)
    except ConfigError as e:
        parser.error(str(e))
    try:
        return trainer.run()
    finally:
        trainer.close()


if __name__ == "__main__":
    raise SystemExit(main())
