"""3D position ids for multimodal RoPE, exactly as HF Qwen2.5-VL ``get_rope_index`` computes them.

Owns: a pure function from token ids, modality types and vision grids to position ids of shape
``[3, batch, seq]`` (temporal, height, width) and the per-sample ``rope_deltas`` used in decoding.

Rules (for each sample, over its non-padding tokens): text tokens advance all three axes by one;
an image or video placeholder run of ``t x (h/m) x (w/m)`` tokens gets a 3D grid starting at the
current position, with temporal positions spaced by ``tokens_per_second * second_per_grid_t`` for
videos (1 for images); afterwards the position advances by ``max(h, w) / m``. Padding positions
stay 0. The modality of each token comes from ``mm_token_type_ids`` (0 text, 1 image, 2 video).

Legend: ``B`` batch, ``S`` sequence, ``N`` number of images/videos.
"""

from __future__ import annotations

import itertools

import torch


def mm_token_type_ids(input_ids_BS: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """0 for text, 1 for image placeholders, 2 for video placeholders (what the processor returns)."""
    types = torch.zeros_like(input_ids_BS, dtype=torch.int32)
    types[input_ids_BS == image_token_id] = 1
    types[input_ids_BS == video_token_id] = 2
    return types


def get_rope_index(
    input_ids_BS: torch.Tensor,
    mm_types_BS: torch.Tensor,
    image_grid_thw_N3: torch.Tensor | None = None,
    video_grid_thw_N3: torch.Tensor | None = None,
    second_per_grid_ts_N: torch.Tensor | list[float] | None = None,
    attention_mask_BS: torch.Tensor | None = None,
    *,
    spatial_merge_size: int = 2,
    tokens_per_second: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids ``[3, B, S]`` and rope deltas ``[B, 1]``.

    Raises:
        ValueError: a placeholder run has no grid left, or its length differs from its grid.
    """
    B, S = input_ids_BS.shape
    device = input_ids_BS.device
    pos_3BS = torch.zeros(3, B, S, dtype=input_ids_BS.dtype, device=device)
    grids = {
        1: iter(image_grid_thw_N3.tolist() if image_grid_thw_N3 is not None else []),
        2: iter(video_grid_thw_N3.tolist() if video_grid_thw_N3 is not None else []),
    }
    seconds_list = (
        second_per_grid_ts_N.tolist() if isinstance(second_per_grid_ts_N, torch.Tensor) else second_per_grid_ts_N
    )
    seconds = iter(seconds_list or [])
    deltas = []
    for b in range(B):
        keep = (
            attention_mask_BS[b].bool()
            if attention_mask_BS is not None
            else torch.ones(S, dtype=torch.bool, device=device)
        )
        types = mm_types_BS[b][keep].tolist()
        pieces: list[torch.Tensor] = []
        current = 0
        start = 0
        for modality, group in itertools.groupby(types):
            length = len(list(group))
            if modality == 0:
                pieces.append(torch.arange(length, device=device).view(1, -1).expand(3, -1) + current)
                current += length
            else:
                try:
                    t, h, w = (int(x) for x in next(grids[modality]))
                except StopIteration:
                    kind = "image" if modality == 1 else "video"
                    raise ValueError(f"sample {b}: more {kind} placeholder runs than {kind} grids") from None
                gh, gw = h // spatial_merge_size, w // spatial_merge_size
                if t * gh * gw != length:
                    raise ValueError(
                        f"sample {b}, tokens {start}..{start + length}: {length} placeholders but grid "
                        f"{(t, h, w)} needs {t * gh * gw}"
                    )
                interval = tokens_per_second * float(next(seconds, 1.0)) if modality == 2 else 1
                tt = (torch.arange(t, device=device) * interval).long()
                hh = torch.arange(gh, device=device) + current
                ww = torch.arange(gw, device=device) + current
                grid = torch.stack(torch.meshgrid(tt, hh, ww, indexing="ij"), dim=0).reshape(3, -1)
                grid[0] += current
                pieces.append(grid)
                current += max(h, w) // spatial_merge_size
            start += length
        positions = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long, device=device)
        pos_3BS[:, b, keep] = positions.to(pos_3BS.dtype)
        deltas.append((positions.max() + 1 - len(types)) if positions.numel() else torch.tensor(0))
    return pos_3BS, torch.stack([torch.as_tensor(d) for d in deltas]).view(B, 1).to(device)
