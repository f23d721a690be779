"""A real single-node Slurm on localhost for the Slurm tests (tests/test_slurm.py).

Debian's packages (``slurm-wlm``, ``munge``), ``/etc/slurm/slurm.conf`` with the settings the
tests rely on (no slurmdbd: ``accounting_storage/none``, so ``sacct`` does not work and the
executor plugin polls with ``squeue``), and the three daemons: munged, slurmctld, slurmd. The node
has this machine's real CPU count and memory (``slurmd -C``).

Idempotent: an already running cluster with the same ``slurm.conf`` is reused (and left running);
a different or missing config is (re)written and the daemons (re)started. Daemons this module
started are stopped by :meth:`LocalSlurm.stop`. Everything has a timeout; where Slurm cannot be
brought up (not root, no apt-get, install failed) :func:`start` returns a reason instead.

Example::

    cluster, reason = start()
    if cluster is None:
        pytest.skip(reason)
    ...
    cluster.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
NODE = "localhost"
SPOOL_CTLD = Path("/var/spool/slurmctld")
SPOOL_D = Path("/var/spool/slurmd")
LOG_DIR = Path("/var/log/slurm")
PIDS = {"slurmctld": Path("/run/slurmctld.pid"), "slurmd": Path("/run/slurmd.pid")}
MUNGE_SOCKET_DIR = Path("/run/munge")
MUNGE_PID = MUNGE_SOCKET_DIR / "munged.pid"

# The settings the issue fixes, plus what a root-run, one-node test cluster needs. MpiDefault=pmi2:
# srun starts the MPICH ranks of the venv's mpi4py with a PMI server (Slurm's mpi_pmi2 plugin).
CONF_TEMPLATE = """\
# Written by batterytwin tests/slurm_cluster.py: a one-node test cluster on localhost.
ClusterName=batterytwin
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={log_dir}/jobcomp.log
JobAcctGatherType=jobacct_gather/none
MpiDefault=pmi2
StateSaveLocation={spool_ctld}
SlurmdSpoolDir={spool_d}
SlurmctldPidFile={pid_ctld}
SlurmdPidFile={pid_d}
SlurmctldLogFile={log_dir}/slurmctld.log
SlurmdLogFile={log_dir}/slurmd.log
# squeue must still list finished jobs when the executor plugin polls (it needs >= 3x its first interval)
MinJobAge=300
ReturnToService=2
SchedulerParameters=sched_interval=2
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=10
NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _run(cmd, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return True
    except (OSError, ValueError, IndexError):
        return False


def _kill(pid_file: Path, timeout: float = 15) -> None:
    """Stop the daemon whose pid the file names (SIGTERM, then SIGKILL)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except OSError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.2)


def install(timeout: float = 300) -> str | None:
    """Install slurm-wlm and munge with apt-get unless present; return a reason on failure."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch", "srun", "squeue")):
        return None
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    start = time.monotonic()
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]):
        left = timeout - (time.monotonic() - start)
        try:
            proc = _run(cmd, timeout=max(left, 1), env=env)
        except subprocess.TimeoutExpired:
            return f"'{' '.join(cmd)}' took longer than {timeout:.0f} s"
        if proc.returncode != 0:
            return f"'{' '.join(cmd)}' failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
    return None


def hardware() -> str:
    """This machine's node line (CPUs, sockets, cores, threads, RealMemory) as ``slurmd -C`` sees it."""
    out = _run(["slurmd", "-C"], timeout=30).stdout
    line = next(l for l in out.splitlines() if l.startswith("NodeName="))
    fields = [f for f in line.split()[1:] if f.split("=")[0] in
              ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")]
    return " ".join(fields)


def config_text() -> str:
    return CONF_TEMPLATE.format(node=NODE, hardware=hardware(), log_dir=LOG_DIR, spool_ctld=SPOOL_CTLD,
                                spool_d=SPOOL_D, pid_ctld=PIDS["slurmctld"], pid_d=PIDS["slurmd"])


def node_state() -> str:
    """The node's state as sinfo prints it (``idle``, ``mix``, ``down*`` ...), or '' when unreachable."""
    try:
        proc = _run(["sinfo", "-h", "-n", NODE, "-o", "%T"], timeout=15)
    except subprocess.TimeoutExpired:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


@dataclass
class LocalSlurm:
    """A running one-node cluster; ``started`` names the daemons this process started."""

    started: list[str] = field(default_factory=list)
    log_dir: Path = LOG_DIR

    def logs(self, n: int = 40) -> str:
        """Tails of the daemon logs, for failure messages."""
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            p = self.log_dir / name
            if p.exists():
                out.append(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(out)

    def stop(self) -> None:
        """Stop the daemons this process started (others are left as they were)."""
        if "slurmctld" in self.started or "slurmd" in self.started:
            subprocess.run(["scancel", "--user=root", "--full"], capture_output=True, timeout=15, check=False)
        for name in ("slurmd", "slurmctld"):
            if name in self.started:
                _kill(PIDS[name])
        if "munged" in self.started:
            _kill(MUNGE_PID)
        self.started.clear()


def _munge_ok() -> bool:
    try:
        enc = _run(["munge", "-n"], timeout=10)
        return enc.returncode == 0 and _run(["unmunge"], timeout=10, input=enc.stdout).returncode == 0
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return False


def start(timeout: float = 120) -> tuple[LocalSlurm | None, str]:
    """Bring the cluster up (installing it if needed): ``(cluster, "")`` or ``(None, reason)``."""
    if os.geteuid() != 0:
        return None, "Slurm tests need root (to install slurm-wlm/munge and run slurmctld/slurmd)"
    reason = install()
    if reason:
        return None, reason
    cluster = LocalSlurm()
    want = config_text()
    same_conf = CONF.exists() and CONF.read_text() == want
    running = [n for n in ("slurmctld", "slurmd") if _alive(PIDS[n])]
    if not same_conf and running:  # another config is live: restart both daemons on ours
        for n in ("slurmd", "slurmctld"):
            _kill(PIDS[n])
        running = []
    for d in (CONF.parent, SPOOL_CTLD, SPOOL_D, LOG_DIR):
        d.mkdir(parents=True, exist_ok=True)
    if not same_conf:
        CONF.write_text(want)

    if not _munge_ok():
        MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
        key = Path("/etc/munge/munge.key")
        if not key.exists():  # Debian's postinst creates it; a container image may lack it
            _run(["mungekey", "--create", "--keyfile", str(key)], timeout=30)
            shutil.chown(key, "munge", "munge")
        _kill(MUNGE_PID)  # a stale munged without a working socket
        proc = _run(["su", "-s", "/bin/sh", "munge", "-c", "munged --force"], timeout=30)
        if proc.returncode != 0 or not _munge_ok():
            return None, f"munged did not start: {proc.stderr.strip()[-300:]}"
        cluster.started.append("munged")

    if "slurmctld" not in running:
        # -c: start from a clean job state, so jobs of an earlier session do not come back
        proc = _run(["slurmctld", "-c"], timeout=30)
        if proc.returncode != 0:
            cluster.stop()
            return None, f"slurmctld did not start ({proc.returncode}): {proc.stderr.strip()}\n{cluster.logs()}"
        cluster.started.append("slurmctld")
    if "slurmd" not in running:
        proc = _run(["slurmd", "-N", NODE], timeout=30)
        if proc.returncode != 0:
            cluster.stop()
            return None, f"slurmd did not start ({proc.returncode}): {proc.stderr.strip()}\n{cluster.logs()}"
        cluster.started.append("slurmd")

    deadline = time.monotonic() + timeout
    resumed = False
    while time.monotonic() < deadline:
        state = node_state()
        if state in ("idle", "mixed", "allocated", "mix", "alloc"):
            return cluster, ""
        if state.startswith(("down", "drain")) and not resumed:  # e.g. left down by an earlier run
            _run(["scontrol", "update", f"nodename={NODE}", "state=resume"], timeout=15)
            resumed = True
        time.sleep(1)
    cluster.stop()
    return None, f"the Slurm node did not become idle within {timeout:.0f} s (state {node_state()!r})\n{cluster.logs()}"
