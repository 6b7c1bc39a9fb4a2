"""Evaluation on MathVista, MathVerse, MathVision and MMMU-Pro with the paper's protocol.

Modules: ``items`` (the ``EvalItem`` contract), ``benchmarks`` (loaders and ``EvalDataError``),
``extract`` (final/first answers), ``score`` (verdicts), ``run`` (``evaluate``, summaries,
outputs) and ``__main__`` (the CLI).
"""
