"""The vLLM rollout bridge: colocated multimodal generation and in-place weight refit.

- ``types``: ``RolloutRequest`` / ``RolloutSample``, the contract with the trainer.
- ``engine``: ``RolloutEngine``, the one module that talks to vLLM.
- ``refit``: trainer shards -> full HF tensors (TP gather, PP broadcast) via the weight map.
- ``replay``: save a step's rollouts and read them back to train without vLLM.
"""
