"""Run observability: what a run leaves behind for people to read while and after it trains.

``metrics_log`` (the durable per-step ``metrics.jsonl``), ``wandb_run`` (optional wandb mirror, offline
by default), ``plots`` (PNG panels next to the run) and ``rank0_log`` (console logging that only rank 0
speaks, except warnings). Nothing here computes a metric: the trainer decides what to report.
"""
