#!/usr/bin/env python
"""Export a Megatron-Core checkpoint (from convert_hf_to_mcore.py or training) as an HF checkpoint.

    python tools/convert_mcore_to_hf.py --mcore-dir ckpt/7b-mcore --out Qwen2.5-VL-7B-srpo

Writes sharded safetensors + index, config.json, tokenizer, processor and chat template, loadable
by transformers and vLLM. --tp/--pp load the checkpoint on that many local processes (faster for
large models; each holds only its shard). --reshard-tp/--reshard-pp instead write a Megatron
checkpoint at another layout.
"""

from srpo_mcore.checkpoint.cli import mcore_to_hf_main

if __name__ == "__main__":
    raise SystemExit(mcore_to_hf_main())
