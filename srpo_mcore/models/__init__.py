"""Model builders on Megatron-Core."""
