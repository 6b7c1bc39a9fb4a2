"""Offline tiny Qwen2.5-VL assets: a locally trained tokenizer, a processor and random checkpoints.

Nothing here downloads anything. Tests and the CPU demo build these at run time (cached), so the
whole stack can be exercised without a model hub.
"""
