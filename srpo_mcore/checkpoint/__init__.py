"""Checkpoints: pure tensor transforms, HF safetensors IO, conversion, distributed save/resume."""
