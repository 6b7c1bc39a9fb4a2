"""3D position ids: hand-computed cases and clear errors (HF equality is in tests/dist)."""

from __future__ import annotations

import pytest
import torch

from srpo_mcore.models.qwen2_5_vl.rope import get_rope_index, mm_token_type_ids

IMG, VID = 9, 8


def test_text_image_text_by_hand() -> None:
    # 2 text tokens, one image with grid (1, 4, 6) -> 2x3 merged tokens, then 2 text tokens
    ids = torch.tensor([[1, 2] + [IMG] * 6 + [3, 4]])
    pos, delta = get_rope_index(ids, mm_token_type_ids(ids, IMG, VID), torch.tensor([[1, 4, 6]]))
    expected = torch.tensor(
        [
            [0, 1, 2, 2, 2, 2, 2, 2, 5, 6],  # t: image at the current position; text resumes at 2 + max(2, 3)
            [0, 1, 2, 2, 2, 3, 3, 3, 5, 6],  # h: rows
            [0, 1, 2, 3, 4, 2, 3, 4, 5, 6],  # w: columns
        ]
    ).view(3, 1, 10)
    assert torch.equal(pos, expected)
    assert delta.tolist() == [[7 - 10]]


def test_video_temporal_spacing_and_padding() -> None:
    ids = torch.tensor([[0, 0, 5] + [VID] * 2, [5] + [VID] * 2 + [6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    grids = torch.tensor([[2, 2, 2], [2, 2, 2]])  # 2 frames of 1x1 merged token each
    pos, _ = get_rope_index(
        ids, mm_token_type_ids(ids, IMG, VID), None, grids, torch.tensor([0.5, 2.0]), mask, tokens_per_second=2
    )
    # sample 0: padding stays 0; text at 0; frames at t = 1 + [0, 1] (spacing 2 x 0.5 = 1)
    assert pos[:, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    # sample 1: frames at t = 1 + [0, 4] (spacing 2 x 2.0); text resumes at 1 + max(2, 2) / 2 = 2
    assert pos[0, 1].tolist() == [0, 1, 5, 2, 3]
    assert pos[1, 1].tolist() == [0, 1, 1, 2, 3]


def test_errors_name_the_sample_and_tokens() -> None:
    ids = torch.tensor([[1] + [IMG] * 5])
    with pytest.raises(ValueError, match=r"sample 0, tokens 1\.\.6: 5 placeholders but grid \(1, 4, 6\) needs 6"):
        get_rope_index(ids, mm_token_type_ids(ids, IMG, VID), torch.tensor([[1, 4, 6]]))
    with pytest.raises(ValueError, match="more image placeholder runs than image grids"):
        get_rope_index(ids, mm_token_type_ids(ids, IMG, VID), None)
