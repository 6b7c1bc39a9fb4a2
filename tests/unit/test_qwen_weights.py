"""Pure weight transforms and the Qwen2.5-VL weight map: exact, complete, invertible."""

from __future__ import annotations

import pytest
import torch

from srpo_mcore.checkpoint import transforms as T
from srpo_mcore.checkpoint.hf_io import HFCheckpoint
from srpo_mcore.models.qwen2_5_vl.config import PRESETS, Qwen25VLArch
from srpo_mcore.models.qwen2_5_vl.weight_map import canonical_name, global_name, to_hf, to_mcore, weight_rows
from srpo_mcore.tiny.checkpoints import TINY_CONFIGS


def test_qkv_fusion_layout_and_round_trip() -> None:
    heads, groups, d, hidden = 4, 2, 3, 5
    q = torch.arange(heads * d * hidden, dtype=torch.float).view(heads * d, hidden)
    k = -torch.arange(groups * d * hidden, dtype=torch.float).view(groups * d, hidden) - 1
    v = k - 1000
    fused = T.fuse_qkv(q, k, v, num_query_groups=groups, head_dim=d)
    # group 0 = q heads 0,1 then k0 then v0
    assert torch.equal(fused[: 2 * d], q[: 2 * d]) and torch.equal(fused[2 * d : 3 * d], k[:d])
    assert torch.equal(fused[3 * d : 4 * d], v[:d]) and torch.equal(fused[4 * d : 6 * d], q[2 * d :])
    back = T.split_qkv(fused, num_query_groups=groups, num_heads=heads, head_dim=d)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))
    bias = T.fuse_qkv(q[:, 0], k[:, 0], v[:, 0], num_query_groups=groups, head_dim=d)
    assert torch.equal(bias, fused[:, 0])


def test_tp_shard_round_trip_with_parts() -> None:
    full = torch.randn(8, 6)
    for tp in (1, 2, 4):
        for parts in (1, 2):
            shards = [T.tp_shard(full, dim=0, parts=parts, tp=tp, rank=r) for r in range(tp)]
            assert torch.equal(T.tp_unshard(shards, dim=0, parts=parts), full)
    gate_up = torch.cat([torch.zeros(4, 2), torch.ones(4, 2)])
    shard0 = T.tp_shard(gate_up, dim=0, parts=2, tp=2, rank=0)
    assert torch.equal(shard0, torch.cat([torch.zeros(2, 2), torch.ones(2, 2)])), "gate and up split separately"
    with pytest.raises(ValueError, match="does not split"):
        T.tp_shard(torch.zeros(6, 2), dim=0, parts=2, tp=2, rank=0)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_weight_map_covers_checkpoint_exactly_and_inverts_bit_exactly(name: str, tiny_checkpoint) -> None:
    path = tiny_checkpoint(name)
    arch = Qwen25VLArch.from_hf(path)
    ckpt = HFCheckpoint(path)
    rows = weight_rows(arch)
    used = [h for r in rows for h in r.hf]
    assert len(used) == len(set(used)), "each HF tensor feeds exactly one Megatron parameter"
    assert set(used) == set(ckpt.names()), set(used) ^ set(ckpt.names())
    for row in rows:
        hf = [ckpt.get(h) for h in row.hf]
        back = dict(to_hf(row, to_mcore(row, hf, arch), arch))
        for h, t in zip(row.hf, hf):
            assert torch.equal(back[h], t), f"{row.mcore} -> {h} is not bit-exact"


def test_names() -> None:
    assert global_name("language_model.decoder.layers.1.mlp.linear_fc1.weight", 14) == (
        "language_model.decoder.layers.15.mlp.linear_fc1.weight"
    )
    assert global_name("vision.layers.1.mlp.linear_fc1.weight", 14) == "vision.layers.1.mlp.linear_fc1.weight"
    assert canonical_name("language_model.decoder.layers.0.self_attention.linear_qkv.layer_norm_weight") == (
        "language_model.decoder.layers.0.input_layernorm.weight"
    )


def test_presets_round_trip_through_hf_config() -> None:
    for arch in PRESETS.values():
        assert Qwen25VLArch.from_hf(arch.to_hf()) == arch
    with pytest.raises(ValueError, match="not qwen2_5_vl"):
        Qwen25VLArch.from_hf({"model_type": "llama", "vision_config": {}})


def test_bad_checkpoint_files_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        HFCheckpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        HFCheckpoint(tmp_path)


def test_transformer_engine_needs_gpu_and_te() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from srpo_mcore.models.qwen2_5_vl.layer_specs import language_block_spec, vision_layer_spec

    for build in (
        lambda: language_block_spec("transformer_engine", 2),
        lambda: vision_layer_spec("transformer_engine"),
    ):
        with pytest.raises(RuntimeError, match="transformer_impl=transformer_engine needs a CUDA GPU"):
            build()
