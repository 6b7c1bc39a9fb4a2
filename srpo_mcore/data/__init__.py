"""RL prompt data: system prompts, local jsonl/parquet prompt datasets with images, a synthetic task.

Modules: ``system_prompts`` (the SRPO and plain system prompts), ``rl_dataset`` (loading and
validating prompt rows, chat templating, rollout requests, prompt token counts), ``synthetic``
(a seeded, PIL-rendered visual-reasoning task for the laptop demo and the tests).
"""
