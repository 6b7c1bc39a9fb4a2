"""Tensors that are already on disk: byte segments of files, copied file to file.

Owns ``StoredTensor`` (dtype, shape and the (file, offset, bytes) segments holding its raw bytes
in order), ``copy_range`` (the kernel's ``copy_file_range`` where it can, a bounded buffer where it
cannot) and ``write_at`` (a tensor's bytes at a file offset). The converters use them when an
output tensor is a byte range of an input file (most tensors at TP=1: the weight map only
rearranges the attention QKV): the bytes go from file to file without being read into memory.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StoredTensor:
    """A tensor whose bytes are already on disk, raw and in order: ``segments`` of (file, offset, bytes)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    segments: tuple[tuple[str, int, int], ...]

    @property
    def nbytes(self) -> int:
        return sum(n for _, _, n in self.segments)

    def write_to(self, fd: int, offset: int) -> None:
        """Copy the bytes into file `fd` starting at `offset`."""
        for src, src_offset, nbytes in self.segments:
            copy_range(src, src_offset, fd, offset, nbytes)
            offset += nbytes


def segments_of(
    start: int, end: int, pieces: list[tuple[int, int, str, int]]
) -> tuple[tuple[str, int, int], ...] | None:
    """The file segments holding bytes [start, end) of a tensor whose bytes are laid out in
    `pieces` of (first byte, bytes, file, offset in the file); None if some byte is in none."""
    segments = []
    for first, size, path, offset in sorted(pieces):
        lo, hi = max(start, first), min(end, first + size)
        if lo < hi:
            segments.append((path, offset + lo - first, hi - lo))
    return tuple(segments) if sum(n for _, _, n in segments) == end - start else None


def nbytes(tensor: torch.Tensor | StoredTensor) -> int:
    return tensor.nbytes if isinstance(tensor, StoredTensor) else tensor.numel() * tensor.element_size()


_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM)


def copy_range(src: str, src_offset: int, dst_fd: int, dst_offset: int, nbytes: int) -> None:
    """Copy `nbytes` of file `src` at `src_offset` into `dst_fd` at `dst_offset`.

    Raises:
        OSError: `src` ends before `nbytes` could be copied (names the file).
    """
    fd = os.open(src, os.O_RDONLY)
    try:
        done = 0
        while done < nbytes:
            try:
                n = os.copy_file_range(fd, dst_fd, nbytes - done, src_offset + done, dst_offset + done)
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                n = 0
            if n == 0:  # not supported between these files (or the source ended): through memory
                while done < nbytes:
                    chunk = os.pread(fd, min(nbytes - done, 64 * 2**20), src_offset + done)
                    if not chunk:
                        raise OSError(f"{src}: file ends {nbytes - done} bytes before its tensor does")
                    os.pwrite(dst_fd, chunk, dst_offset + done)
                    done += len(chunk)
                return
            done += n
    finally:
        os.close(fd)


def write_at(fd: int, tensor: torch.Tensor, offset: int) -> None:
    """Write `tensor`'s raw bytes into file `fd` at `offset` (pwrite may write short: loop)."""
    view = memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
