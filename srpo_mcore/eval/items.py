"""``EvalItem``: one benchmark question in the uniform shape every loader returns.

Owns the data contract between the benchmark loaders (``benchmarks``), the scorer (``score``) and
the runner (``run``). Does not own reading any file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

type AnswerType = Literal["choice", "integer", "float", "text", "list", "expression"]


@dataclass(frozen=True)
class EvalItem:
    """One question of a benchmark, ready to be prompted and scored."""

    id: str
    """The benchmark's own question id (MathVista ``pid``, MathVerse ``sample_index``, ...)."""
    benchmark: str
    """mathvista | mathverse | mathvision | mmmu_pro."""
    split: str
    """The split or configuration read (``testmini``, ``test``, ``standard (10 options)``, ``vision``)."""
    category: str
    """The official sub-split reported per row: MathVerse problem version, MathVision subject,
    MathVista task, MMMU-Pro subject."""
    question: str
    """The text shown to the model, options included; ``<image>`` marks where each image goes
    (when absent, the images come before the text)."""
    images: tuple[bytes, ...]
    """Encoded images in prompt order."""
    gold: str
    """The gold answer: a letter for ``choice`` items, else the benchmark's answer string."""
    answer_type: AnswerType
    options: tuple[str, ...] = ()
    """Option texts in letter order (empty for free-form items and when the options are only in an image)."""
    precision: int | None = None
    """Decimal places a float answer is compared at (MathVista ``precision``)."""
    unit: str | None = None
    """The answer's unit, stripped from predictions before numeric comparison (MathVista ``unit``)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Other published fields worth keeping in the per-sample output (level, difficulty, ...)."""

    @property
    def gold_text(self) -> str:
        """The gold as text: the option's text for a choice item with options, else ``gold``."""
        if self.answer_type == "choice" and self.options:
            i = ord(self.gold) - ord("A")
            if 0 <= i < len(self.options):
                return self.options[i]
        return self.gold
