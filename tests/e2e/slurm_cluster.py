"""A real single-node SLURM cluster in a temp dir, for tests: munged + slurmctld + slurmd, no systemd.

Owns: writing slurm.conf/cgroup.conf and a munge key under a private directory, starting the three
daemons as root (the current user), waiting for the node to become idle, small client helpers
(``sbatch``, ``job``, ``wait_state``) and a teardown that stops the daemons by their pid files and
proves nothing (daemon, slurmstepd, job process) is left behind.

Does not own: what the jobs run (tests submit the real sbatch scripts under examples/).

Why these settings (measured, see the shared ENVIRONMENT.md): ``proctrack/cgroup`` because
``linuxproc`` leaks children that outlive the batch shell; ``cred_expire=10`` because the requeue
delay derives from it (120 s otherwise); fast scheduler intervals so jobs start within a second.
No accounting daemon: job state comes from ``scontrol show job`` (kept for ``MinJobAge`` seconds).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "srun")
_DAEMONS = ("munged", "slurmctld", "slurmd", "slurmstepd")


def require_binaries() -> None:
    """Skip (locally) or fail (in CI, ``CI`` set) when the SLURM/munge binaries or root are missing."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    problems = []
    if missing:
        problems.append(
            f"SLURM binaries missing: {', '.join(missing)} (apt-get install -y slurmctld slurmd slurm-client munge)"
        )
    if os.geteuid() != 0:
        problems.append("the test cluster's daemons run as root (SlurmUser=root), and this is not root")
    if not problems:
        return
    if os.environ.get("CI"):
        pytest.fail("; ".join(problems) + "; CI must run the SLURM tests, not skip them")
    pytest.skip("; ".join(problems))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_of(names: tuple[str, ...]) -> dict[int, str]:
    """pid -> comm of every live process whose comm is one of `names`."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names:
            found[int(d.name)] = comm
    return found


def _descendants_with_env(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (SLURM_CONF=<our conf>): the jobs' processes."""
    pids = []
    needle = marker.encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(int(d.name))
    return pids


def _slurm_cgroups() -> list[Path]:
    """Top-level SLURM cgroup directories (cgroup v1 controllers), e.g. /sys/fs/cgroup/freezer/slurm_localhost."""
    return [p for p in Path("/sys/fs/cgroup").glob("*/slurm*") if p.is_dir()]


class SlurmCluster:
    """Handle on the running cluster; every client call runs with this cluster's ``SLURM_CONF``."""

    def __init__(self, root: Path, cpus: int) -> None:
        self.root = root
        self.cpus = cpus
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._started: list[tuple[str, Path]] = []  # (daemon, pid file), in start order
        self._cgroups_before = set(_slurm_cgroups())

    # ---- setup -----------------------------------------------------------------------------
    def _write_config(self) -> None:
        r = self.root
        for sub in ("munge", "state", "spool", "log"):
            (r / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (r / "cgroup.conf").write_text(
            "CgroupPlugin=cgroup/v1\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n"
            if Path("/sys/fs/cgroup/freezer").is_dir()
            else "CgroupPlugin=autodetect\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n"
        )
        self.conf.write_text(
            f"""ClusterName=srpotest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
DependencyParameters=kill_invalid_depend
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=10
NodeName=localhost CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _start(self, name: str, argv: list[str], pid_file: Path) -> None:
        subprocess.run(argv, check=True, env=self.env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} wrote no pid file {pid_file}; log: {self.logs()}")
            time.sleep(0.05)
        self._started.append((name, pid_file))

    def start(self) -> None:
        r = self.root
        self._write_config()
        self._start(
            "munged",
            [
                "munged", "--force", f"--socket={self.munge_socket}", f"--key-file={r}/munge/munge.key",
                f"--pid-file={r}/munge/munged.pid", f"--log-file={r}/log/munged.log",
                f"--seed-file={r}/munge/munged.seed",
            ],
            r / "munge" / "munged.pid",
        )  # fmt: skip
        self._start("slurmctld", ["slurmctld", "-f", str(self.conf)], r / "slurmctld.pid")
        self._start("slurmd", ["slurmd", "-f", str(self.conf), "-N", "localhost"], r / "slurmd.pid")
        deadline = time.monotonic() + 30
        while True:
            out = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip()
            if out == "idle":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node not idle after 30 s (state {out!r}); logs: {self.logs()}")
            time.sleep(0.1)

    # ---- clients ---------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(argv), env={**self.env, **(env or {})}, capture_output=True, text=True, check=check, timeout=60
        )

    def sbatch(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Submit; return the job id."""
        out = subprocess.run(
            ["sbatch", "--parsable", *argv],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed ({out.returncode}): {out.stderr}")
        return int(out.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, Restarts, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))

    def wait_state(self, job_id: int, states: set[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {info}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {f.name} ---\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    # ---- teardown --------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, stop the daemons (reverse order) by pid file, check nothing is left."""
        if any(n == "slurmctld" for n, _ in self._started):
            self.run("scancel", "--full", "--user=root", check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", "-t", "R,CG", check=False).stdout.strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        for _name, pid_file in reversed(self._started):
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        self._started.clear()
        # Jobs' processes (anything still carrying our SLURM_CONF) must be gone within a few seconds.
        marker = f"SLURM_CONF={self.conf}"
        deadline = time.monotonic() + 15
        while (left := _descendants_with_env(marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        # proctrack/cgroup leaves its (empty) top cgroup, e.g. freezer/slurm_localhost: remove ours.
        for d in sorted(set(_slurm_cgroups()) - self._cgroups_before, key=lambda p: -len(p.parts)):
            for sub in sorted(d.rglob("*/"), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()
        stray = _pids_of(_DAEMONS)
        if left or stray:
            for pid in left:  # leave the machine clean even when failing
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"processes left after teardown: jobs {left}, daemons {stray}")


@contextlib.contextmanager
def slurm_cluster(cpus: int = 2) -> Iterator[SlurmCluster]:
    """Start a single-node cluster (as root) in a fresh temp dir; tear it down on exit."""
    require_binaries()
    stray = _pids_of(_DAEMONS)
    assert not stray, f"SLURM/munge processes already running: {stray}"
    # A short path: the munge socket path must fit a unix socket name (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    cluster = SlurmCluster(root, cpus)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
