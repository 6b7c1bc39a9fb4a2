"""Each CPU shim of srpo_mcore._compat does what it claims, and only while enabled."""

from __future__ import annotations

import pytest
import torch

from srpo_mcore._compat import megatron_cpu


@pytest.fixture
def cpu_shims():
    assert megatron_cpu.enable_megatron_cpu(force=True)
    yield
    megatron_cpu.disable_megatron_cpu()


def test_current_device_and_stream_redirected_then_restored(cpu_shims) -> None:
    assert torch.cuda.current_device() == torch.device("cpu")
    x = torch.arange(3, device=torch.cuda.current_device())
    assert x.device.type == "cpu"
    stream = torch.cuda.current_stream()
    stream.wait_stream(stream)  # no-ops on CPU, must not raise
    stream.wait_event(None)
    megatron_cpu.disable_megatron_cpu()
    assert not megatron_cpu.is_enabled()
    if not torch.cuda.is_available():
        with pytest.raises((RuntimeError, AssertionError)):
            torch.cuda.current_device()
    megatron_cpu.enable_megatron_cpu(force=True)


def test_default_causal_mask_on_cpu(cpu_shims) -> None:
    from megatron.core.fusions import fused_softmax

    mask = fused_softmax.get_default_causal_mask(4)
    assert mask.device.type == "cpu" and mask.dtype == torch.bool
    assert torch.equal(mask, torch.ones(4, 4).triu(1).bool())


def test_rng_tracker_forks_cpu_generator(cpu_shims) -> None:
    from megatron.core import tensor_parallel
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    tracker.reset()
    tracker.add("model-parallel-rng", 123)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with tracker.fork("model-parallel-rng"):
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before), "fork must restore the default generator"
    expected = torch.rand(4, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, expected), "the forked state is the tracker's seed"
    with tracker.fork("model-parallel-rng"):
        b = torch.rand(4)
    assert not torch.equal(a, b), "the tracked state advances across forks"
    assert tensor_parallel.random._get_cuda_rng_state().device.type == "cpu"
    tracker.reset()


def test_version_check_refuses_untested_megatron(monkeypatch) -> None:
    from megatron.core import package_info

    monkeypatch.setattr(package_info, "MINOR", 99)
    monkeypatch.delenv("SRPO_ALLOW_UNTESTED_MCORE", raising=False)
    with pytest.raises(RuntimeError, match=r"0\.99"):
        megatron_cpu.enable_megatron_cpu(force=True)
    assert not megatron_cpu.is_enabled()


def test_sp_norm_tags_parameters() -> None:
    from megatron.core.transformer.transformer_config import TransformerConfig

    from srpo_mcore._compat.sp_norm import SequenceParallelTorchNorm

    cfg = TransformerConfig(
        num_layers=1, hidden_size=8, num_attention_heads=2, normalization="RMSNorm", use_cpu_initialization=True
    )
    cfg.sequence_parallel = True  # set after init: TransformerConfig checks tp>1 for SP
    norm = SequenceParallelTorchNorm(cfg, 8, eps=1e-6)
    assert isinstance(norm, torch.nn.RMSNorm)
    assert all(p.sequence_parallel for p in norm.parameters())
    cfg.normalization = "L2Norm"
    with pytest.raises(ValueError, match="L2Norm"):
        SequenceParallelTorchNorm(cfg, 8)


def test_pipeline_schedule_zeros_and_synchronize_on_cpu(cpu_shims) -> None:
    from megatron.core.pipeline_parallel import schedules

    t = schedules.torch.zeros([], dtype=torch.int, device="cuda")
    assert t.device.type == "cpu" and t.dtype == torch.int
    assert schedules.torch.ones is torch.ones  # everything else is torch's own
    torch.cuda.synchronize()  # a no-op on CPU
    megatron_cpu.disable_megatron_cpu()
    assert schedules.torch is torch
    megatron_cpu.enable_megatron_cpu(force=True)


def test_cp_rotary_slice_matches_load_balanced_layout(cpu_shims) -> None:
    from megatron.core.models.common.embeddings import rope_utils

    from srpo_mcore.parallel.context import cp_slice

    class Group:
        def __init__(self, size: int, rank: int) -> None:
            self._size, self._rank = size, rank

        def size(self) -> int:
            return self._size

        def rank(self) -> int:
            return self._rank

    emb = torch.arange(16.0).view(16, 1, 1, 1)
    for rank in (0, 1):
        got = rope_utils.get_pos_emb_on_this_cp_rank(emb, 0, Group(2, rank))
        assert torch.equal(got, cp_slice(emb, 0, 2, rank))
    assert cp_slice(torch.arange(8), 0, 2, 0).tolist() == [0, 1, 6, 7]


def test_optimizer_shims_redirect_cuda_and_restore(cpu_shims) -> None:
    """Megatron's optimizer modules see CPU tensors where they ask for CUDA; type spoofing is scoped."""
    from megatron.core.optimizer import clip_grads, distrib_optimizer
    from megatron.core.optimizer import optimizer as optimizer_mod

    from srpo_mcore._compat import megatron_optim_cpu

    for module in (optimizer_mod, distrib_optimizer, clip_grads):
        t = module.torch.tensor([1.0], dtype=torch.float, device="cuda")
        assert t.device.type == "cpu"
    x = torch.zeros(2)
    assert x.type() == "torch.FloatTensor"
    with megatron_optim_cpu.cuda_type_names():
        assert x.type() == "torch.cuda.FloatTensor" and x.bfloat16().type() == "torch.cuda.BFloat16Tensor"
        assert x.type(torch.float64).dtype == torch.float64  # conversions still work
    assert x.type() == "torch.FloatTensor"  # nobody else sees the spoofed names
    norm, _ = clip_grads.l2_norm_impl(0, None, [[torch.tensor([3.0]), torch.tensor([4.0])]], False)
    assert norm.device.type == "cpu" and norm.item() == pytest.approx(5.0)
    megatron_cpu.disable_megatron_cpu()
    assert optimizer_mod.torch is torch and clip_grads.torch is torch
    megatron_cpu.enable_megatron_cpu(force=True)


def test_checkpoint_write_queue_is_in_process() -> None:
    """Saves must not start a multiprocessing Manager (it outlives a SIGKILLed trainer)."""
    import multiprocessing
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from srpo_mcore._compat.megatron_ckpt_queue import use_in_process_write_queue

    before = len(multiprocessing.active_children())
    use_in_process_write_queue()
    assert isinstance(filesystem_async.get_write_results_queue(), queue.Queue)
    assert len(multiprocessing.active_children()) == before
