"""The training-loop machinery shared by SFT (stage 1) and GRPO (stage 2) on Megatron-Core.

Owns ``MegatronTrainer``: process groups from the config, the run directory (``config.yaml``,
``metrics.jsonl``, ``plots/``, ``checkpoints/``, ``wandb/``, ``hf/``), the policy loaded from
``model.hf_dir`` and wrapped in Megatron DDP, Megatron's optimizer and lr schedule, the prompt rows
and their sampler, micro-batching of a step's sequences, and the loop's lifecycle: resume from the
latest checkpoint (model, optimizer, lr schedule, data position, RNG; metrics cut back), SIGTERM
(finish the step, save, exit 0), periodic checkpoints and plots, the HF export at the end.
Its command line (the run directory's lock, dying with the launcher) is ``trainer_cli``'s.

Subclasses own what a step does (``train_one_step``) and what a step costs in rows (``rows_per_step``).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from srpo_mcore.config import ConfigError, RunConfig, gpu_only_fields, to_dict
from srpo_mcore.data.formats import AnswerFrom
from srpo_mcore.observe.rank0_log import get_logger

log = get_logger("srpo_mcore.trainer")


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


class MegatronTrainer:
    """One training run on this rank (construct on every rank; every method is collective)."""

    name = "train"
    """Progress-bar label and log prefix."""
    answer_from: AnswerFrom = "gold"
    """What a conversation row's answer is: the gold (RL) or the assistant turn (SFT: ``response``)."""

    def __init__(self, cfg: RunConfig) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core import tensor_parallel
        from transformers import AutoProcessor

        from srpo_mcore.checkpoint.load_hf import load_hf_weights
        from srpo_mcore.checkpoint.train_state import TrainCheckpointer
        from srpo_mcore.data.prompt_sampler import PromptSampler
        from srpo_mcore.models.qwen2_5_vl.model import Qwen25VLModel, arch_from_config, layout_from_config
        from srpo_mcore.observe.metrics_log import MetricsLog
        from srpo_mcore.parallel.dims import ParallelDims
        from srpo_mcore.parallel.setup import init_parallel
        from srpo_mcore.rl.optim import build_optimizer, prepare_for_training

        if not cfg.model.hf_dir:
            raise ConfigError("model.hf_dir: the run starts from an HF Qwen2.5-VL checkpoint; set its directory")
        gpu_only = gpu_only_fields(cfg.model, cfg.optim)
        if gpu_only and not torch.cuda.is_available():
            raise ConfigError(
                f"{', '.join(gpu_only)}: GPU features, and this machine has no CUDA device; the CPU path runs "
                "Megatron's unfused local layers — turn them off (they are on in the GPU recipes only)"
            )
        self.cfg = cfg
        p = cfg.parallel
        self.dims = ParallelDims(tp=p.tp, pp=p.pp, cp=p.cp, vpp=p.vpp, sequence_parallel=p.sequence_parallel)
        self.env = init_parallel(self.dims, backend=p.backend, timeout_s=p.timeout_s)
        self.rank0 = self.env.rank == 0
        torch.manual_seed(cfg.seed)
        tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
        self.run_dir = Path(cfg.output_dir) / cfg.name
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.hf_dir = cfg.model.hf_dir
        self.arch = arch_from_config(cfg.model)
        self.layout = layout_from_config(cfg.model, p)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        self.model_cls, self.load_hf = Qwen25VLModel, load_hf_weights
        self.model = self._build_model()
        self.ddp = prepare_for_training(self.model, cfg.optim)
        self.processor = AutoProcessor.from_pretrained(self.hf_dir)
        self.tokenizer = self.processor.tokenizer
        self.rows = self._load_rows()
        self.sampler = PromptSampler(len(self.rows), seed=cfg.seed, shuffle=cfg.data.shuffle)
        self.total_steps = cfg.train.steps or cfg.train.episodes * math.ceil(len(self.rows) / self.rows_per_step())
        self.optimizer, self.scheduler = build_optimizer(
            self.ddp, self.optim_config(), dtype=cfg.model.dtype, total_steps=self.total_steps
        )
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        tp_sp = p.tp if p.sequence_parallel else 1
        self.pad_multiple = (2 * p.cp if p.cp > 1 else 1) * tp_sp
        self.metrics = MetricsLog(self.run_dir, enabled=self.rank0)
        self.checkpointer = TrainCheckpointer(
            self.run_dir / "checkpoints",
            keep_last=cfg.train.keep_last,
            optimizer_format=cfg.checkpoint.optimizer_format,
            layout={"tp": p.tp, "pp": p.pp, "cp": p.cp, "dp": self.dp_size},
        )
        self.step = 0
        self.wandb: Any = None

    # -- hooks ------------------------------------------------------------------------------------

    def rows_per_step(self) -> int:
        """Prompt rows one step consumes."""
        raise NotImplementedError

    def train_one_step(self) -> dict[str, float]:
        """Run step ``self.step + 1``, advance ``self.step``, return its metrics."""
        raise NotImplementedError

    def optim_config(self) -> Any:
        """The optimizer section to build from (``self.total_steps`` is known when this is called)."""
        return self.cfg.optim

    def after_resume(self) -> None:
        """Called once the checkpoint is loaded (e.g. to refit a rollout engine)."""

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {"loss": f"{metrics.get('train/loss', float('nan')):.4f}"}

    # -- setup ------------------------------------------------------------------------------------

    def _build_model(self) -> Any:
        model = self.model_cls(self.arch, self.layout)
        if self.device is not None:
            model.to(self.device)
        self.load_hf(model, self.hf_dir, progress=self.rank0)
        return model

    def _load_rows(self) -> Any:
        from srpo_mcore.data.rl_dataset import load_prompt_rows

        # collective: rank 0 indexes the files, every rank checks a share of the rows (both cached)
        rows, report = load_prompt_rows(
            self.cfg.data, progress=self.rank0, processor=self.processor, answer_from=self.answer_from
        )
        log.info("%s", report.summary())
        return rows

    def resume(self) -> None:
        """Continue from the run directory's latest checkpoint, if any (and ``train.resume``)."""
        latest = self.checkpointer.latest() if self.cfg.train.resume else None
        if latest is None:
            return
        state = self.checkpointer.load(latest, self.model, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load(state["data"])
        self.step = int(state["step"])
        self.metrics.truncate_after(self.step)
        self.after_resume()
        log.info("resumed from %s at step %d", latest, self.step)
        was = state.get("layout")
        if was is not None and was != self.checkpointer.layout:
            log.warning(
                "resumed at another layout (saved %s, now %s): model, optimizer moments and steps, lr schedule and "
                "data position carried over exactly",
                was, self.checkpointer.layout,
            )  # fmt: skip
        for what in self.checkpointer.not_carried:
            log.warning("not carried over exactly: %s", what)

    # -- batching ---------------------------------------------------------------------------------

    def micro_batches(self, sequences: Sequence[Any], index: Sequence[int]) -> list[Any]:
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
                aggregation=self.aggregation(),
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

    def aggregation(self) -> str:
        """How the loss is averaged: token_mean or seq_mean."""
        return "token_mean"

    # -- the loop ---------------------------------------------------------------------------------

    def save(self) -> None:
        from srpo_mcore.rl.optim import finish_param_sync

        finish_param_sync(self.ddp)  # optim.overlap_param_gather: the checkpoint holds the updated weights
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
        from srpo_mcore.observe.wandb_run import WandbRun

        cfg = self.cfg
        self.resume()
        self.wandb = WandbRun(self.run_dir, cfg.logging, name=cfg.name, config=to_dict(cfg), enabled=self.rank0)
        _Stop.install()
        log.info(
            "%s: %d rows, %d steps (from %d), world=%d tp=%d pp=%d cp=%d dp=%d, run dir %s",
            self.name, len(self.rows), self.total_steps, self.step, self.env.world_size, cfg.parallel.tp,
            cfg.parallel.pp, cfg.parallel.cp, self.dp_size, self.run_dir,
        )  # fmt: skip
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.name, unit="step", disable=not self.rank0)
        saved_at = self.step
        while self.step < self.total_steps:
            metrics = self.train_one_step()
            if self.step % cfg.logging.log_every == 0 or self.step == self.total_steps:
                self.metrics.log(self.step, metrics)
                self.wandb.log(self.step, metrics)
            bar.update(1)
            bar.set_postfix(self.postfix(metrics))
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
        from srpo_mcore.rl.optim import finish_param_sync
        from srpo_mcore.rollout.refit import iter_hf_weights

        finish_param_sync(self.ddp)
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

        if self.wandb is not None:
            self.wandb.finish()
        destroy_parallel()
