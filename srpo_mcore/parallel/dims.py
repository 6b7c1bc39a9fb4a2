"""ParallelDims: the trainer's parallel layout and every divisibility rule it must satisfy.

Owns: the arithmetic of a layout (data-parallel size from the world size, tp*pp*cp*dp == world) and
the checks against the model shape (heads and query groups by TP, layers by PP*VPP, sequence length
by 2*CP*TP, sequence parallel needing TP>1). All problems are reported together in one message.

Does not own: creating process groups (``parallel.setup``) or reading the config file.
"""

from __future__ import annotations

from dataclasses import dataclass


class LayoutError(ValueError):
    """The parallel layout does not fit the world size or the model."""


@dataclass(frozen=True)
class ParallelDims:
    """A parallel layout. ``dp`` is derived: world // (tp * pp * cp)."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    vpp: int | None = None
    sequence_parallel: bool = False

    @property
    def model_parallel_size(self) -> int:
        """Ranks that hold one replica of the model: tp * pp * cp."""
        return self.tp * self.pp * self.cp

    def dp(self, world_size: int) -> int:
        """Data-parallel size for `world_size`; raises LayoutError if it does not divide."""
        self.check(world_size=world_size)
        return world_size // self.model_parallel_size

    def problems(
        self,
        *,
        world_size: int | None = None,
        num_attention_heads: int | None = None,
        num_query_groups: int | None = None,
        num_layers: int | None = None,
        seq_length: int | None = None,
        vision_num_heads: int | None = None,
    ) -> list[str]:
        """Every rule the layout breaks, as human-readable lines (empty when valid)."""
        out: list[str] = []
        for name in ("tp", "pp", "cp"):
            if getattr(self, name) < 1:
                out.append(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        if self.vpp is not None and self.vpp < 1:
            out.append(f"parallel.vpp must be >= 1 or null, got {self.vpp}")
        if out:
            return out
        if self.vpp is not None and self.vpp > 1 and self.pp == 1:
            out.append(f"parallel.vpp={self.vpp} needs parallel.pp > 1")
        if self.sequence_parallel and self.tp == 1:
            out.append("parallel.sequence_parallel=true needs parallel.tp > 1")
        if world_size is not None and world_size % self.model_parallel_size:
            out.append(
                f"world size {world_size} is not divisible by tp*pp*cp = "
                f"{self.tp}*{self.pp}*{self.cp} = {self.model_parallel_size}"
            )
        if num_attention_heads is not None and num_attention_heads % self.tp:
            out.append(
                f"parallel.tp={self.tp} does not divide model.num_attention_heads={num_attention_heads}; "
                f"allowed tp values: {_divisors(num_attention_heads, num_query_groups)}"
            )
        if num_query_groups is not None and num_query_groups % self.tp:
            out.append(
                f"parallel.tp={self.tp} does not divide model.num_query_groups={num_query_groups}; "
                f"allowed tp values: {_divisors(num_attention_heads, num_query_groups)}"
            )
        if vision_num_heads is not None and vision_num_heads % self.tp:
            out.append(f"parallel.tp={self.tp} does not divide the vision tower's num_heads={vision_num_heads}")
        stages = self.pp * (self.vpp or 1)
        if num_layers is not None and num_layers % stages:
            out.append(
                f"model.num_layers={num_layers} is not divisible by pp*vpp = {self.pp}*{self.vpp or 1} = {stages}"
            )
        if seq_length is not None and self.cp > 1 and seq_length % (2 * self.cp * self.tp):
            out.append(
                f"sequence length {seq_length} is not divisible by 2*cp*tp = {2 * self.cp * self.tp} "
                "(context parallel splits each sequence into 2*cp load-balanced chunks)"
            )
        return out

    def check(self, **kwargs: int | None) -> None:
        """Raise LayoutError listing every broken rule (see `problems` for the arguments)."""
        found = self.problems(**kwargs)  # type: ignore[arg-type]
        if found:
            raise LayoutError("invalid parallel layout:\n  - " + "\n  - ".join(found))


def _divisors(heads: int | None, groups: int | None) -> list[int]:
    n = groups or heads or 1
    return [d for d in range(1, n + 1) if n % d == 0 and (heads is None or heads % d == 0)]
