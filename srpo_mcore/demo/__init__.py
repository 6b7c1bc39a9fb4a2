"""The laptop demo: the whole SRPO pipeline on CPU in minutes (``python -m srpo_mcore.demo``).

``config`` (the one-file recipe), ``instruct`` (stage 0's plain-format targets), ``pipeline`` (the
stages in order, resumable), ``measure`` (greedy accuracy + sampled reward of a policy on the test
split), ``report`` (report.md, report.json, PNGs). The README's main command runs it.
"""
