"""HFCheckpoint reads every tensor exactly as safetensors does, and names the file at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from srpo_mcore.checkpoint.hf_io import HFCheckpoint


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "b.fp32": torch.randn(7, generator=g),
        "c.fp16": torch.randn(2, 2, 2, generator=g).to(torch.float16),
        "d.i64": torch.arange(-4, 6),
        "e.bool": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(2.5),
        "g.empty": torch.zeros(0, 4),
        "h.fp8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
    }


def test_reads_equal_safetensors_single_and_sharded(tmp_path: Path) -> None:
    ts = tensors()
    single = tmp_path / "single"
    single.mkdir()
    save_file(ts, str(single / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(ts)
    save_file({k: ts[k] for k in names[:4]}, str(sharded / "m1.safetensors"))
    save_file({k: ts[k] for k in names[4:]}, str(sharded / "m2.safetensors"))
    index = {"weight_map": {k: "m1.safetensors" if k in names[:4] else "m2.safetensors" for k in names}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    reference = load_file(str(single / "model.safetensors"))
    for d in (single, sharded):
        ckpt = HFCheckpoint(d)
        assert ckpt.names() == names
        for k in names:
            got = ckpt.get(k)
            assert got.dtype == reference[k].dtype and got.shape == reference[k].shape, k
            assert torch.equal(got.reshape(-1).view(torch.uint8), reference[k].reshape(-1).view(torch.uint8)), k
        a = ckpt.get("b.fp32")
        a.zero_()  # each read is memory of its own
        assert torch.equal(ckpt.get("b.fp32"), reference["b.fp32"])
        ckpt.close()


def test_truncated_and_inconsistent_files_are_named(tmp_path: Path) -> None:
    save_file(tensors(), str(tmp_path / "model.safetensors"))
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read safetensors file"):
        HFCheckpoint(tmp_path)
    d = tmp_path / "idx"
    d.mkdir()
    save_file({"x": torch.ones(2)}, str(d / "m.safetensors"))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "m.safetensors", "y": "m.safetensors"}})
    )
    ckpt = HFCheckpoint(d)
    assert torch.equal(ckpt.get("x"), torch.ones(2))
    with pytest.raises(ValueError, match=r"m\.safetensors: cannot read tensor 'y'"):
        ckpt.get("y")
    with pytest.raises(KeyError, match="no tensor 'z'"):
        ckpt.get("z")


@pytest.mark.parametrize("reserve", [1 << 16, 64])  # 64 bytes: the header outgrows its space
def test_shard_writer_round_trips_through_safetensors(tmp_path: Path, reserve: int) -> None:
    from srpo_mcore.checkpoint.hf_export import ShardWriter

    ts = tensors()
    w = ShardWriter(tmp_path / "s.safetensors", reserve=reserve)
    for k, t in ts.items():
        w.add(k, t)
    with pytest.raises(ValueError, match="written twice"):
        w.add("a.bf16", ts["a.bf16"])
    w.finish()
    back = load_file(str(tmp_path / "s.safetensors"))  # the reference reader accepts the file
    assert sorted(back) == sorted(ts)
    for k, t in ts.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape, k
        assert torch.equal(back[k].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "fallback"])
def test_shard_writer_copies_stored_bytes(tmp_path: Path, monkeypatch, kernel_copy: bool) -> None:
    """A StoredTensor's bytes (pieces of other files) land in the shard between ordinary tensors;
    where the kernel cannot copy between the files, they are copied through memory."""
    import errno
    import os

    from srpo_mcore.checkpoint.hf_export import ShardWriter
    from srpo_mcore.checkpoint.stored import StoredTensor

    if not kernel_copy:

        def refuse(*_args: object) -> int:
            raise OSError(errno.EXDEV, "cross-device copy")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    ts = tensors()
    blob = torch.arange(1000, dtype=torch.float32)
    (tmp_path / "blob.bin").write_bytes(b"junk" + blob.numpy().tobytes())
    w = ShardWriter(tmp_path / "s.safetensors")
    w.add("first", ts["a.bf16"])
    # rows 2..3 of a [4, 250] tensor, then row 0: two pieces of the blob, 4 bytes into the file
    stored = StoredTensor(
        torch.float32,
        (3, 250),
        ((str(tmp_path / "blob.bin"), 4 + 2 * 1000, 2000), (str(tmp_path / "blob.bin"), 4, 1000)),
    )
    w.add("stored", stored)
    w.add("last", ts["b.fp32"])
    w.finish()
    back = load_file(str(tmp_path / "s.safetensors"))
    rows = blob.view(4, 250)
    assert torch.equal(back["stored"], torch.cat([rows[2:4], rows[0:1]]))
    assert torch.equal(back["first"], ts["a.bf16"]) and torch.equal(back["last"], ts["b.fp32"])
    bad = StoredTensor(torch.float32, (2000,), ((str(tmp_path / "blob.bin"), 4, 8000),))  # past the end
    w2 = ShardWriter(tmp_path / "t.safetensors")
    with pytest.raises(OSError, match=r"blob\.bin: file ends"):
        w2.add("bad", bad)
