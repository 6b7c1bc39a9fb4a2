"""Optional wandb mirror of the run's metrics, offline by default, never fatal.

Owns: starting wandb for a run directory (``dir=run_dir``, mode and project from ``LoggingConfig``),
keeping one wandb run across restarts (its id lives in ``<run_dir>/wandb_id.txt``, and a resumed job
calls ``wandb.init(id=..., resume="allow")``), and degrading to a warning when wandb is missing or
fails: telemetry must never stop a training run.

Does not own: the metrics themselves or their durable record (``metrics_log`` is the source of truth;
wandb is a viewer), plots, or syncing offline runs (``wandb sync <run_dir>/wandb/offline-run-*``).

The environment variable ``WANDB_MODE``, when set to one of the three modes, overrides the recipe's
``wandb_mode``: it is the conventional kill switch, and the test suite pins it to ``offline``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from srpo_mcore.config import LoggingConfig
from srpo_mcore.observe.rank0_log import get_logger

ID_FILE = "wandb_id.txt"
Mode = Literal["offline", "online", "disabled"]
MODES: tuple[Mode, ...] = get_args(Mode)

log = get_logger(__name__)


def _new_run_id() -> str:
    """An id in wandb's own format (8 characters of ``[a-z0-9]``)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_mode(configured: str) -> Mode:
    """The wandb mode to use: ``$WANDB_MODE`` if it names a valid mode, else the configured one.

    Args:
        configured: ``LoggingConfig.wandb_mode``.

    Raises:
        ValueError: If the configured mode is not one of ``offline``, ``online``, ``disabled``.
    """
    by_name: dict[str, Mode] = {mode: mode for mode in MODES}  # str -> Mode, checked, without a cast
    if configured not in by_name:
        raise ValueError(f"wandb mode must be one of {MODES}, got {configured!r}")
    return by_name.get(os.environ.get("WANDB_MODE", "").strip().lower(), by_name[configured])


def _settings_kwargs(wandb: Any) -> dict[str, Any]:
    """Quiet, local-only ``wandb.Settings`` fields, keeping only those this wandb version knows.

    ``wandb.Settings`` rejects unknown fields, and its field set changes between releases.
    """
    wanted: dict[str, Any] = {
        "silent": True,
        # wandb's console capture wraps sys.stdout/stderr; the job log already holds the console, and
        # a second writer around our rank-0 logging and progress bars only garbles them.
        "console": "off",
        "save_code": False,
        "disable_job_creation": True,
    }
    known = getattr(wandb.Settings, "model_fields", None)
    if known is None:
        return {}
    return {k: v for k, v in wanted.items() if k in known}


class WandbRun:
    """One wandb run per run directory, resumed across restarts; a no-op when off or broken.

    Args:
        run_dir: The run directory. wandb writes under ``<run_dir>/wandb/``; the run id is kept in
            ``<run_dir>/wandb_id.txt``.
        cfg: The logging section of the recipe (``wandb_mode``, ``wandb_project``).
        name: The run name shown by wandb (``RunConfig.name``).
        config: A plain, JSON-able dict recorded as the wandb config (e.g. ``dataclasses.asdict(run_cfg)``).
        enabled: False on every rank but global rank 0.

    After construction, ``active`` says whether wandb is really recording. ``log`` and ``finish``
    never raise: a failure is logged once as a warning and wandb is dropped for the rest of the run.
    """

    def __init__(
        self,
        run_dir: str | Path,
        cfg: LoggingConfig,
        *,
        name: str,
        config: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.mode = resolve_mode(cfg.wandb_mode)
        self.run_id: str | None = None
        self._run: Any = None
        if not enabled or self.mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        if self.mode == "offline":
            # wandb-core otherwise starts its error-reporting/telemetry client, which talks to the network.
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        try:
            import wandb
        except Exception as err:  # ImportError, or a broken install failing at import time
            log.warning("wandb unavailable (%s: %s); continuing without wandb", type(err).__name__, err)
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            id_path = self.run_dir / ID_FILE
            run_id = id_path.read_text(encoding="utf-8").strip() if id_path.exists() else ""
            if not run_id:
                run_id = _new_run_id()
                # Written before init, so a job killed during init still resumes this id.
                _write_atomic(id_path, run_id + "\n")
            self._run = wandb.init(
                project=cfg.wandb_project,
                name=name,
                id=run_id,
                resume="allow",
                dir=str(self.run_dir),
                mode=self.mode,
                config=dict(config) if config is not None else None,
                settings=wandb.Settings(**_settings_kwargs(wandb)),
            )
            self.run_id = run_id
        except Exception as err:
            log.warning("wandb.init failed (%s: %s); continuing without wandb", type(err).__name__, err)
            self._run = None

    @property
    def active(self) -> bool:
        """Whether a wandb run is open and recording."""
        return self._run is not None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` at `step`; None values are skipped (wandb has no null).

        Args:
            step: The training step; wandb ignores steps not greater than the last one it recorded.
            metrics: Flat mapping of metric name to a number or None.
        """
        if self._run is None:
            return
        try:
            self._run.log({k: v for k, v in metrics.items() if v is not None}, step=int(step))
        except Exception as err:
            log.warning("wandb.log failed (%s: %s); disabling wandb for this run", type(err).__name__, err)
            self._drop()

    def finish(self) -> None:
        """Close the wandb run (flushes offline files). Safe to call twice or when inactive."""
        if self._run is None:
            return
        try:
            self._run.finish()
        except Exception as err:
            log.warning("wandb.finish failed (%s: %s)", type(err).__name__, err)
        self._run = None

    def _drop(self) -> None:
        run, self._run = self._run, None
        with contextlib.suppress(Exception):
            run.finish(exit_code=1)
