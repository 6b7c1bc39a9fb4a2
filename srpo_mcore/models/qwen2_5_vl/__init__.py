"""Qwen2.5-VL on Megatron-Core: language model, native vision tower, fusion, parallel layouts.

- ``config``: architecture dataclasses (from HF ``config.json`` or the 3B/7B/32B/72B presets) and
  the Megatron ``TransformerConfig`` of each tower.
- ``rope``: 3D (multimodal RoPE) position ids, exactly as HF ``get_rope_index``.
- ``vision``: the vision tower and the 2x2 patch merger built from Megatron-Core layers.
- ``attention``: the local spec's core attention (PyTorch SDPA, exact under context parallelism).
- ``layer_specs``: local (CPU/GPU) and Transformer Engine (GPU, FP8) layer specs.
- ``model``: ``Qwen25VLModel`` — fusion of vision features into the text embeddings, PP/CP/SP.
- ``weight_map``: the one HF <-> Megatron name/transform table.
"""
