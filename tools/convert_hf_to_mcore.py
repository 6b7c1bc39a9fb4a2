#!/usr/bin/env python
"""Convert an HF Qwen2.5-VL checkpoint into a Megatron-Core distributed checkpoint.

    python tools/convert_hf_to_mcore.py --hf-dir Qwen2.5-VL-7B-Instruct --out ckpt/7b-mcore --tp 4 --pp 1

One local process per TP x PP rank loads its shard (HF tensors are memory-mapped and read one
weight-map row at a time) and the ranks write the checkpoint together. Training loads it at this
or any other layout (resharding on load). The output appears only when complete; an existing
output is refused unless --force.
"""

from srpo_mcore.checkpoint.cli import hf_to_mcore_main

if __name__ == "__main__":
    raise SystemExit(hf_to_mcore_main())
