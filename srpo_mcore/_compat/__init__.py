"""Every unavoidable shim over an upstream package lives in this package, one seam per file.

- ``megatron_cpu``: run Megatron-Core on CPU with gloo (torch.cuda.current_device and the CUDA RNG
  tracker redirected to the CPU). Enabled only when no GPU is present; version-checked.
- ``sp_norm``: a torch norm that works with sequence parallelism in Megatron-Core's local spec.

Each shim asserts the upstream version it was written against and has a test under tests/.
"""
