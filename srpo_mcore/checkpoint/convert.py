"""HF <-> Megatron-Core distributed checkpoint conversion (the library behind tools/convert_*).

Owns the three conversions and their safety rules:

- ``hf_to_mcore``: one process per TP x PP rank (the calling process itself when there is one)
  builds its model shard uninitialised and writes a Megatron-Core distributed checkpoint
  (``torch_dist``), each tensor read from the HF files, transformed through the weight map and
  cut to the rank's shard just before it is written (``_compat.megatron_lazy_save``) — or, where
  the HF files already hold its bytes raw (TP=1, not rearranged), copied file to file. Any layout
  loads it (resharding on load).
- ``mcore_to_hf``: reads a Megatron checkpoint (as written here or by training) a layer at a time
  at a layout (``_compat.megatron_partial_load``), gathers each layer through the weight map and
  streams it into HF safetensors shards of bounded size, written tensor by tensor; on one rank,
  tensors the checkpoint stores raw and the weight map does not transform are copied file to file.
- ``reshard_mcore``: Megatron checkpoint -> Megatron checkpoint at another TP x PP layout, each
  chunk read from the source as it is written.

Memory: a rank holds about one tensor (HF -> Megatron, resharding) or one layer plus the tensor
being written (Megatron -> HF), never its whole shard (``tools/bench_convert.py`` measures it).

Inputs are validated before any work (model type, missing/unexpected/mis-shaped tensors, a TP size
that does not divide heads/groups/vocabulary, unreadable safetensors, an existing output without
``force``). Output goes to a temporary sibling directory renamed into place only when complete.
A Megatron checkpoint directory carries ``srpo_mcore.json`` (architecture, dtype, layout written),
``config.json`` and the tokenizer/processor files, so it can be exported back without the source.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from srpo_mcore.atomic_dir import atomic_dir
from srpo_mcore.checkpoint.hf_export import SIDE_FILES
from srpo_mcore.checkpoint.hf_io import HFCheckpoint
from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch, TextArch, VisionArch
from srpo_mcore.models.qwen2_5_vl.weight_map import hub_name, weight_rows
from srpo_mcore.parallel.dims import ParallelDims
from srpo_mcore.parallel.launch import run_here, spawn
from srpo_mcore.run_lock import hold_dir

META = "srpo_mcore.json"
FORMAT = "srpo-mcore/torch_dist/v1"


class ConversionError(ValueError):
    """Bad conversion input; the message names the file, tensor or option at fault."""


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def read_hf_source(hf_dir: str | Path) -> tuple[Qwen25VLArch, HFCheckpoint]:
    """Architecture and tensors of an HF checkpoint, checked against the weight map."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise ConversionError(f"{hf_dir}: no config.json (not an HF checkpoint directory)")
    try:
        arch = Qwen25VLArch.from_hf(hf_dir)
    except (ValueError, KeyError) as e:
        raise ConversionError(f"{hf_dir / 'config.json'}: {e}") from e
    try:
        ckpt = HFCheckpoint(hf_dir, rename=hub_name)
    except (ValueError, FileNotFoundError) as e:
        raise ConversionError(str(e)) from e
    expected = {h for row in weight_rows(arch) for h in row.hf}
    names = set(ckpt.names())
    if arch.text.tie_word_embeddings:
        names.discard("lm_head.weight")  # some tied checkpoints still store the copy
    missing, unexpected = sorted(expected - names), sorted(names - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing tensors ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
            )
        if unexpected:
            parts.append(
                f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
            )
        raise ConversionError(f"{hf_dir}: does not match the Qwen2.5-VL weight map: " + "; ".join(parts))
    return arch, ckpt


def check_layout(arch: Qwen25VLArch, tp: int, pp: int) -> None:
    """Raise ConversionError naming every rule the TP x PP layout breaks for `arch`."""
    problems = ParallelDims(tp=tp, pp=pp).problems(
        num_attention_heads=arch.text.num_attention_heads,
        num_query_groups=arch.text.num_query_groups,
        num_layers=arch.text.num_layers,
        vision_num_heads=arch.vision.num_heads,
    )
    if arch.text.vocab_size % tp:
        problems.append(f"--tp {tp} does not divide the vocabulary size {arch.text.vocab_size}")
    if problems:
        raise ConversionError("invalid layout: " + "; ".join(p.replace("parallel.", "--") for p in problems))


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConversionError(f"{out}: already exists and is not empty; pass --force to replace it")


def _copy_side_files(src: Path, dst: Path) -> None:
    for name in (*SIDE_FILES, "config.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def read_meta(mcore_dir: str | Path) -> dict[str, Any]:
    """The ``srpo_mcore.json`` of a Megatron checkpoint directory (with the architecture parsed)."""
    path = Path(mcore_dir) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{mcore_dir}: no {META} (not a checkpoint written by srpo-mcore)") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise ConversionError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    a = meta["arch"]
    meta["arch"] = Qwen25VLArch(
        text=TextArch(**{**a["text"], "mrope_section": tuple(a["text"]["mrope_section"])}),
        vision=VisionArch(**{**a["vision"], "fullatt_block_indexes": tuple(a["vision"]["fullatt_block_indexes"])}),
        **{k: v for k, v in a.items() if k not in ("text", "vision")},
    )
    return meta


def _write_meta(out: Path, arch: Qwen25VLArch, dtype: str, tp: int, pp: int) -> None:
    meta = {"format": FORMAT, "arch": dataclasses.asdict(arch), "dtype": dtype, "written_tp": tp, "written_pp": pp}
    (out / META).write_text(json.dumps(meta, indent=2))


def describe_checkpoint(
    out: str | Path, arch: Qwen25VLArch, *, dtype: str, tp: int, pp: int, hf_source: str | Path
) -> None:
    """Make a Megatron checkpoint directory (e.g. a training checkpoint) readable by the converters:
    write ``srpo_mcore.json`` and copy config/tokenizer/processor files from the HF source."""
    _write_meta(Path(out), arch, dtype, tp, pp)
    _copy_side_files(Path(hf_source), Path(out))


# ---------------------------------------------------------------------------------------------
# Workers (one process per rank)
# ---------------------------------------------------------------------------------------------


def _on_ranks(fn: Callable[..., Any], world: int, *args: Any) -> list[Any]:
    """Run a worker on `world` ranks: spawned processes (which pin the mmap threshold), or this
    process when one rank suffices and no process group is active here (saves starting an
    interpreter that imports torch and Megatron again). Returns the workers' results."""
    import torch.distributed as dist

    if world > 1 or dist.is_initialized():
        return spawn(_pinned, world, fn, *args)
    from srpo_mcore._compat.megatron_cpu import disable_megatron_cpu, is_enabled
    from srpo_mcore.parallel.setup import destroy_parallel

    shimmed = is_enabled()
    try:
        return [run_here(fn, *args)]
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # as from spawned ranks: RuntimeError with the rank's traceback
        raise RuntimeError(f"conversion failed:\n--- rank 0 ---\n{traceback.format_exc()}") from e
    finally:
        destroy_parallel()  # idempotent: after a failure too, leave no Megatron state behind
        if not shimmed:
            disable_megatron_cpu()


def _reset_peak_rss() -> None:
    """Start this process's VmHWM afresh (Linux: ``5`` to clear_refs), so a conversion run in an
    existing process reports its own peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int:
    """This process's resident-set high-water mark in bytes (VmHWM of its own address space:
    unlike ru_maxrss it does not inherit the parent's peak across fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pin_mmap_threshold() -> None:
    """For a process that converts and exits (the CLIs, spawned ranks): give every allocation of
    1 MiB or more its own mapping, returned to the OS when freed (glibc ``mallopt``).

    glibc otherwise raises its mmap threshold after large frees (up to 32 MiB), and the 1-32 MiB
    tensors a conversion allocates and frees stay in its heap: measured, RSS grew by 25-50 MB per
    7B layer exported (``malloc_trim`` after each layer still left ~30 MB a layer); pinned, it is
    flat. Library calls in a long-lived process do not do this: it lasts for the process.
    """
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallopt"):  # glibc only
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


_M_MMAP_THRESHOLD = -3


def _pinned(fn: Callable[..., Any], *args: Any) -> Any:
    """A spawned rank: pin the mmap threshold, then run the worker."""
    pin_mmap_threshold()
    return fn(*args)


def _build(arch: Qwen25VLArch, tp: int, pp: int, dtype: str) -> Any:
    from megatron.core import tensor_parallel

    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.setup import init_parallel

    init_parallel(ParallelDims(tp=tp, pp=pp))
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    return Qwen25VLModel(arch, ModelLayout(tp=tp, pp=pp, dtype=dtype, init_weights=False))


def _hf_to_mcore_worker(hf_dir: str, tmp: str, arch: Qwen25VLArch, tp: int, pp: int, dtype: str) -> tuple[int, int]:
    """Stream this rank's shard: each tensor is read from the HF files, cut and written in turn;
    at TP=1 a tensor the HF files hold raw (not rearranged, same dtype) is copied file to file.

    The model is built uninitialised (its parameters are never touched, so they cost no memory);
    it only supplies the checkpoint's layout. Peak memory is about one full weight-map row.
    Returns (peak RSS, bytes copied file to file).
    """
    import torch
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from tqdm import tqdm

    from srpo_mcore._compat.megatron_lazy_save import LazyTorchDistSaveStrategy
    from srpo_mcore.checkpoint.load_hf import hf_shard, rows_for_model
    from srpo_mcore.checkpoint.stored import StoredTensor, segments_of
    from srpo_mcore.models.qwen2_5_vl.weight_map import hf_byte_ranges
    from srpo_mcore.parallel.setup import destroy_parallel

    _reset_peak_rss()
    model = _build(arch, tp, pp, dtype)
    ckpt = HFCheckpoint(hf_dir, rename=hub_name)
    by_storage = {p.untyped_storage().data_ptr(): (local, p, row) for local, p, row in rows_for_model(model)}
    bar = tqdm(total=len(by_storage), desc="convert", unit="tensor", disable=dist.get_rank() != 0)
    last: dict[int, torch.Tensor] = {}  # the last parameter produced (fused fc1 is saved as two halves)
    done: set[int] = set()  # parameters copied file to file (for the progress bar)
    copied = [0]

    def in_hf_files(placeholder: torch.Tensor, param: Any, row: Any) -> StoredTensor | None:
        """`placeholder`'s bytes as segments of the HF files, when they are stored there raw."""
        if tp != 1 or not placeholder.is_contiguous():
            return None  # a TP shard is not a byte range of the full tensor
        ranges = hf_byte_ranges(row, tuple(param.shape), param.dtype, arch)
        pieces = []
        for name, first, nbytes, _ in ranges or ():
            path, offset, stored, dtype = ckpt.location(name)
            if dtype != param.dtype or stored != nbytes:
                return None  # converted on the way (e.g. bf16 -> fp32)
            pieces.append((first, nbytes, path, offset))
        start = (placeholder.storage_offset() - param.storage_offset()) * param.element_size()
        segments = segments_of(start, start + placeholder.nbytes, pieces) if ranges else None
        return None if segments is None else StoredTensor(placeholder.dtype, tuple(placeholder.shape), segments)

    @torch.no_grad()
    def produce(placeholder: torch.Tensor, key: str, _offset: tuple[int, ...]) -> torch.Tensor | StoredTensor:
        """The bytes of `placeholder`: a parameter, or a view of one (a layer's (1, ...) view, a half)."""
        ptr = placeholder.untyped_storage().data_ptr()
        if ptr not in by_storage:
            raise KeyError(f"{key}: checkpoint tensor of shape {tuple(placeholder.shape)} is no model parameter")
        local, param, row = by_storage[ptr]
        stored = in_hf_files(placeholder, param, row)
        if stored is not None:
            copied[0] += stored.nbytes
            if ptr not in done:
                done.add(ptr)
                bar.update()
            return stored
        if ptr not in last:
            last.clear()
            last[ptr] = hf_shard(ckpt, local, param, row, arch).contiguous()
            bar.update()
        start = placeholder.storage_offset() - param.storage_offset()
        return last[ptr].as_strided(placeholder.shape, placeholder.stride(), start)

    dist_checkpointing.save(model.sharded_state_dict(), tmp, sharded_strategy=LazyTorchDistSaveStrategy(produce))
    bar.close()
    destroy_parallel()
    return _peak_rss(), copied[0]


def _reshard_worker(src: str, tmp: str, arch: Qwen25VLArch, tp: int, pp: int, dtype: str) -> int:
    """Stream this rank's shard at the new layout: each chunk is read from `src` as it is written."""
    import torch
    from megatron.core import dist_checkpointing

    from srpo_mcore._compat.megatron_lazy_save import LazyTorchDistSaveStrategy
    from srpo_mcore._compat.megatron_partial_load import Chunk, ChunkReader, megatron_chunks
    from srpo_mcore.checkpoint.stored import StoredTensor
    from srpo_mcore.parallel.setup import destroy_parallel

    _reset_peak_rss()
    model = _build(arch, tp, pp, dtype)
    shapes = {c.key: c.global_shape for c in megatron_chunks(model.sharded_state_dict())}
    source = ChunkReader(src)

    def produce(placeholder: torch.Tensor, key: str, offset: tuple[int, ...]) -> torch.Tensor | StoredTensor:
        out = torch.empty(placeholder.shape, dtype=placeholder.dtype)  # untouched unless read into
        chunk = Chunk(key, offset, shapes[key], out)
        where = source.stored_bytes(chunk)
        if where is not None:  # the source keeps exactly this chunk raw: copy it file to file
            return StoredTensor(out.dtype, tuple(out.shape), ((where[0], where[1], out.nbytes),))
        source.read([chunk])
        return out

    dist_checkpointing.save(model.sharded_state_dict(), tmp, sharded_strategy=LazyTorchDistSaveStrategy(produce))
    destroy_parallel()
    return _peak_rss()


def _row_groups(arch: Qwen25VLArch) -> list[list[Any]]:
    """The weight-map rows in export order, grouped one layer (or one non-layer row) at a time."""
    groups: list[list[Any]] = []
    last = None
    for row in weight_rows(arch):
        parts = row.mcore.split(".")
        layer = ".".join(parts[: parts.index("layers") + 2]) if "layers" in parts else row.mcore
        if layer != last:
            groups.append([])
            last = layer
        groups[-1].append(row)
    return groups


def _stored_row(row: Any, param: Any, chunks: list[Any], source: Any, arch: Qwen25VLArch) -> list[Any] | None:
    """`row`'s HF tensors as ``StoredTensor``s when each is a byte range of `param` (one-rank
    export: the full tensor) that the checkpoint keeps raw in files of its own — every "copy" row
    and both halves of a SwiGLU fc1; None when any of them must be read (interleaved QKV, shards)."""
    from srpo_mcore.checkpoint.stored import StoredTensor, segments_of
    from srpo_mcore.models.qwen2_5_vl.weight_map import hf_byte_ranges

    ranges = hf_byte_ranges(row, tuple(param.shape), param.dtype, arch)
    if ranges is None:
        return None
    size, storage = param.element_size(), param.untyped_storage().data_ptr()
    pieces = []  # (first byte in the parameter, bytes, file, offset in the file)
    for c in chunks:
        if c.dest.untyped_storage().data_ptr() != storage:
            continue
        where = source.stored_bytes(c) if c.dest.is_contiguous() else None
        if where is None:
            return None
        pieces.append(((c.dest.storage_offset() - param.storage_offset()) * size, c.dest.nbytes, *where))
    out = []
    for name, start, nbytes, shape in ranges:
        segments = segments_of(start, start + nbytes, pieces)
        if segments is None:
            return None  # part of it is not stored raw
        out.append((name, StoredTensor(param.dtype, shape, segments)))
    return out


def _mcore_to_hf_worker(
    src: str,
    tmp_out: str,
    arch: Qwen25VLArch,
    tp: int,
    pp: int,
    dtype: str,
    max_shard_bytes: int,
    quantize: str | None = None,
) -> tuple[int, int]:
    """Export a layer at a time: load its shards from the checkpoint, gather, write, forget.

    The model is built uninitialised; each layer's parameters are loaded from the checkpoint just
    before they are exported and replaced by untouched memory afterwards, so a rank holds about
    one layer (plus the tensors being written), never its whole shard. A one-rank export does not
    read what it need not transform: an HF tensor that the checkpoint already stores raw (a whole
    tensor file, as ``hf_to_mcore`` writes them) is copied file to file (``_stored_row``).
    With `quantize` (an FP8 scheme) the language model's linear weights are written in FP8 with
    their scales (``checkpoint.fp8``, ModelOpt's format) and the copy shortcut is off.
    Returns (peak RSS, bytes copied file to file).
    """
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    from srpo_mcore._compat.megatron_partial_load import ChunkReader, megatron_chunks
    from srpo_mcore.checkpoint.hf_export import write_hf_checkpoint
    from srpo_mcore.checkpoint.load_hf import rows_for_model
    from srpo_mcore.parallel.setup import destroy_parallel
    from srpo_mcore.rollout.refit import iter_hf_weights

    _reset_peak_rss()
    model = _build(arch, tp, pp, dtype)
    local_names: dict[str, list[tuple[str, Any]]] = {}
    for local, param, row in rows_for_model(model):
        local_names.setdefault(row.mcore, []).append((local, param))

    source = ChunkReader(src)
    total = sum(len(r.hf) for r in weight_rows(arch))
    bar = tqdm(total=total, desc="export", unit="tensor", disable=dist.get_rank() != 0)
    one_rank = dist.get_world_size() == 1 and quantize is None  # else every row is materialised
    copied = [0]

    def weights() -> Any:
        for rows in _row_groups(arch):
            mine = [lp for row in rows for lp in local_names.get(row.mcore, [])]
            wanted = {local for local, _ in mine}
            # Rebuilt per layer: it must alias the layer's current (fresh) parameters, not released ones.
            request = {k: v for k, v in model.sharded_state_dict().items() if k in wanted}
            chunks = megatron_chunks(request)
            del request
            stored = {}
            if one_rank:
                for row in rows:
                    found = _stored_row(row, local_names[row.mcore][0][1], chunks, source, arch)
                    if found is not None:
                        stored[row.mcore] = found
                        copied[0] += sum(t.nbytes for _, t in found)
            skip = {p.untyped_storage().data_ptr() for row in stored for _, p in local_names[row]}
            source.read([c for c in chunks if c.dest.untyped_storage().data_ptr() not in skip])  # this rank only
            del chunks
            for row in rows:
                item = None
                for item in stored.get(row.mcore) or iter_hf_weights(model, rows=[row], bucket_bytes=0):
                    bar.update()
                    yield item  # TP gathers, PP broadcasts above
                del item  # nothing may keep the layer alive: the next one is read next
            for _, param in mine:  # forget the layer: fresh, never-touched memory in its place
                param.data = torch.empty_like(param.data)

    if dist.get_rank() == 0:
        stream, quantization = weights(), None
        if quantize is not None:
            from srpo_mcore.checkpoint.fp8 import quantization_metadata, quantize_stream

            quantization = quantization_metadata(quantize)
            stream = quantize_stream(stream, quantize)
        write_hf_checkpoint(
            stream,
            arch,
            tmp_out,
            source_dir=src,
            max_shard_bytes=max_shard_bytes,
            force=True,
            quantization=quantization,
        )
    else:
        for _ in weights():  # the gathers and broadcasts are collective: every rank walks every row
            pass
    bar.close()
    dist.barrier()
    destroy_parallel()
    return _peak_rss(), copied[0]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _atomically(out: Path, force: bool, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` into a temporary sibling of `out`, then rename it into place (one writer at a
    time: a second converter writing `out` refuses with ``DirLocked``)."""
    with hold_dir(out, "a checkpoint converter", appears_at_end=True):
        _refuse_existing(out, force)
        with atomic_dir(out) as tmp:
            write(tmp)
    return out


def hf_to_mcore(
    hf_dir: str | Path,
    out: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: str = "bf16",
    force: bool = False,
    stats: dict[str, int] | None = None,
) -> Path:
    """Convert an HF Qwen2.5-VL checkpoint into a Megatron-Core distributed checkpoint.

    `stats`, when given, receives ``peak_rss_bytes`` of the largest rank process and
    ``copied_bytes``, the tensor bytes copied file to file instead of being read and written.
    """
    hf_dir = Path(hf_dir)
    arch, _ = read_hf_source(hf_dir)
    check_layout(arch, tp, pp)

    def write(tmp: Path) -> None:
        results = _on_ranks(_hf_to_mcore_worker, tp * pp, str(hf_dir), str(tmp), arch, tp, pp, dtype)
        if stats is not None:
            stats["peak_rss_bytes"] = max(peak for peak, _ in results)
            stats["copied_bytes"] = sum(copied for _, copied in results)
        _copy_side_files(hf_dir, tmp)
        _write_meta(tmp, arch, dtype, tp, pp)

    return _atomically(Path(out), force, write)


def reshard_mcore(src: str | Path, out: str | Path, *, tp: int = 1, pp: int = 1, force: bool = False) -> Path:
    """Rewrite a Megatron checkpoint at another TP x PP layout."""
    src = Path(src)
    meta = read_meta(src)
    arch = meta["arch"]
    check_layout(arch, tp, pp)

    def write(tmp: Path) -> None:
        _on_ranks(_reshard_worker, tp * pp, str(src), str(tmp), arch, tp, pp, meta["dtype"])
        _copy_side_files(src, tmp)
        _write_meta(tmp, arch, meta["dtype"], tp, pp)

    return _atomically(Path(out), force, write)


def mcore_to_hf(
    src: str | Path,
    out: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    force: bool = False,
    max_shard_bytes: int = 5 * 2**30,
    stats: dict[str, int] | None = None,
    quantize: str | None = None,
) -> Path:
    """Export a Megatron checkpoint as an HF checkpoint (loading it at TP x PP ranks).

    `quantize`: an FP8 scheme of ``checkpoint.fp8`` (``block128``): the language model's linear
    weights are written in ModelOpt's FP8 format, everything else as stored.

    `stats`, when given, receives ``peak_rss_bytes`` of the largest rank process and
    ``copied_bytes``, the tensor bytes copied file to file instead of being read and written.
    """
    src = Path(src)
    meta = read_meta(src)
    arch = meta["arch"]
    check_layout(arch, tp, pp)
    if quantize is not None:
        from srpo_mcore.checkpoint.fp8 import FP8Error, quantization_metadata

        try:
            quantization_metadata(quantize)  # refuses an unknown or unexported scheme before any work
        except FP8Error as e:
            raise ConversionError(f"--quantize fp8 --fp8-scheme {quantize}: {e}") from e

    def write(tmp: Path) -> None:
        results = _on_ranks(
            _mcore_to_hf_worker, tp * pp, str(src), str(tmp), arch, tp, pp, meta["dtype"], max_shard_bytes, quantize
        )
        if stats is not None:
            stats["peak_rss_bytes"] = max(peak for peak, _ in results)
            stats["copied_bytes"] = sum(copied for _, copied in results)

    return _atomically(Path(out), force, write)
