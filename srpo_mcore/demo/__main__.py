"""``python -m srpo_mcore.demo``: run the whole SRPO pipeline on the synthetic task (the README's main job).

Owns the command line only (and the run directory's lock, held for the demo's life, ``--fresh``
included); the stages are ``pipeline``'s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from srpo_mcore.config import ConfigError
from srpo_mcore.demo.config import load_demo_config
from srpo_mcore.demo.pipeline import DemoPipeline, StageError
from srpo_mcore.run_lock import LOCK_NAME, DirLocked, hold_dir

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "examples" / "srpo_tiny_cpu.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m srpo_mcore.demo",
        description=(
            "The whole SRPO pipeline on a laptop: synthetic visual task -> stage 0 (plain answers) -> "
            "reflection set -> reflection SFT -> GRPO with the reflection reward -> test-split measurements "
            "-> report.md with plots. Rerun the same command to continue an interrupted run."
        ),
    )
    p.add_argument("--config", type=Path, default=DEFAULT_RECIPE, help="demo recipe (default: %(default)s)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set grpo.train.steps=10 --set output_dir=/tmp/runs (repeatable)",
    )  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="delete the run directory first instead of continuing it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    try:
        cfg = load_demo_config(a.config, a.overrides)
    except ConfigError as e:
        p.error(str(e))
    pipe = DemoPipeline(cfg, progress=not a.no_progress)
    if a.fresh and pipe.run_dir.exists() and not (pipe.run_dir / "recipe.yaml").exists():
        p.error(f"--fresh: {pipe.run_dir} is not a demo run directory (no recipe.yaml); not deleting it")
    try:
        with hold_dir(pipe.run_dir, "the SRPO demo"):  # one demo per run directory, --fresh included
            if a.fresh:
                for child in pipe.run_dir.iterdir():
                    if child.name != LOCK_NAME:
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            report = pipe.run()
    except (StageError, DirLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.read_text().split("## Training")[0].rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
