"""batterytwin on a real Slurm: the executor-plugin profile, the in-allocation launcher, preemption.

A one-node Slurm (Debian's slurm-wlm + munge, slurmctld and slurmd on localhost, no slurmdbd) is
brought up once for the session by :mod:`tests.slurm_cluster`; the tests skip, printing why, only
where that is impossible (not root, no apt-get, the install failed). Each workflow run here is
compared with the same targets run locally (``snakemake --cores 2``, ``mpiexec``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from batterytwin import store

from . import slurm_cluster
from .conftest import BIN, REPO

pytestmark = pytest.mark.slow

SBATCH = REPO / "slurm" / "batterytwin.sbatch"
# The test cluster has neither GPUs nor node features: these override the Perlmutter #SBATCH lines.
TINY_ALLOCATION = ["--constraint=", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=15"]

# The part of config.yaml the Slurm runs change: small phantoms, the phantom rule as an MPI rule
# with 2 ranks (started by srun on Slurm, mpiexec locally).
TEST_CONFIG = """\
samples:
  phantom_train: {source: synthetic, shape: [32, 32, 32], seed: 1, role: train}
  phantom: {source: synthetic, shape: [32, 40, 40], seed: 2, role: analyse}
store: {chunk: 16, shard: 32}
resources:
  default: {tasks: 1, cpus_per_task: 1, mem_mb: 1000, runtime: 10, gpu: 0}
  phantom: {tasks: 2}
"""
SAMPLES = ("phantom_train", "phantom")
STORES = ("volume.zarr", "clean.zarr", "truth.zarr")
# The stages run on Slurm here (rule all grows with the pipeline; its whole chain runs in test_workflow).
TARGETS = [f"results/{s}/volume.zarr" for s in SAMPLES]
PLUGIN_TARGETS = ["results/phantom/volume.zarr"]  # one MPI job keeps the per-job queueing short


def _env(**extra: str) -> dict:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        env.pop(var)  # pytest itself may run inside a Slurm job
    return env


def _snakemake(workdir: Path, *args: str, targets=TARGETS, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), *targets, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "config.yaml"), str(workdir / "test.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)


def _workdir(tmp_path_factory, name: str) -> Path:
    wd = tmp_path_factory.mktemp(name)
    (wd / "test.yaml").write_text(TEST_CONFIG)
    return wd


def _job_state(job: int) -> str:
    """The job's state from squeue (finished jobs stay listed for MinJobAge); no sacct needed."""
    proc = subprocess.run(["squeue", "-h", "-j", str(job), "--states=all", "-o", "%T"], capture_output=True,
                          text=True, timeout=15)
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""


def _assert_same_stores(run: Path, reference: Path, samples=SAMPLES) -> None:
    for sample in samples:
        for name in STORES:
            got = store.open_volume(run / "results" / sample / name)
            want = store.open_volume(reference / "results" / sample / name)
            assert got.array.dtype == want.array.dtype, (sample, name)
            np.testing.assert_array_equal(got.array[:], want.array[:], err_msg=f"{sample}/{name}")
            assert got.shards == want.shards and got.attrs["voxel_size_um"] == want.attrs["voxel_size_um"]
    assert not list((run / "results").rglob("*.tmp-*")), "a temporary store was left behind"


def _assert_two_ranks(log: Path) -> None:
    """The phantom ran as one 2-rank MPI job: rank 0 logs 'rank 0/2' (two singletons would log 0/1)."""
    text = log.read_text()
    assert re.search(r"\[rank 0/2\]", text), text[-2000:]


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _trained_step(log: Path) -> int:
    """The last step the training log reports (it logs every 10 steps)."""
    steps = re.findall(r"step (\d+)/\d+ loss", log.read_text()) if log.exists() else []
    return int(steps[-1]) if steps else 0


def _steps(job: int) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-s", "-j", str(job), "-o", "%i"], capture_output=True, text=True,
                         timeout=15).stdout.split()
    return [s for s in out if s.split(".")[-1].isdigit()]  # srun steps, not .batch/.extern


def _submit(args: list[str], env: dict) -> int:
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=30, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().split(";")[0])


def _wait_end(job: int, timeout: float, release_requeued: bool = False) -> str:
    """Wait for the job to leave the queue, shortening a requeued job's hold.

    Slurm holds a requeued batch job for 120 s (BeginTime); the test releases it after 5 s: an
    instant restart can be refused by slurmd ("Job credential revoked", the old run's credential
    is revoked to the second).
    """
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")
    pending_since = []

    def done():
        state = _job_state(job)
        if release_requeued and state == "PENDING":
            pending_since.append(time.monotonic())
            if pending_since[-1] - pending_since[0] >= 5:
                subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], capture_output=True,
                               timeout=15)
        else:
            pending_since.clear()
        return state if state in final else ""

    try:
        return _wait_for(done, timeout, f"job {job} to finish", poll=1)
    except AssertionError:
        subprocess.run(["scancel", str(job)], capture_output=True, timeout=15)
        raise


@pytest.fixture(scope="session")
def slurm():
    cluster, reason = slurm_cluster.start()
    if cluster is None:
        print(f"\nSlurm tests skipped: {reason}")
        pytest.skip(reason)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    """The reference: the same targets run locally, the MPI rule under mpiexec."""
    wd = _workdir(tmp_path_factory, "local")
    proc = _snakemake(wd, "--cores", "2", "--config", "mpi=mpiexec")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return wd


def test_cluster_profile_and_config_plan_srun_launched_mpi_rules(tmp_path):
    """slurm/profile + config.cluster.yaml: a dry-run (no Slurm needed) plans MPI rules as sized srun steps."""
    env = _env(BATTERYTWIN_ACCOUNT="m1234", BATTERYTWIN_QOS="regular")
    cmd = [str(BIN / "snakemake"), "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--profile", str(REPO / "slurm" / "profile"), "--configfile", str(REPO / "config.cluster.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "srun --cpus-per-task=8 -n 16 batterytwin phantom" in out, out[-3000:]
    assert "--shape 256 512 512" in out  # the production sizes, not the CPU demo's
    # the account and QOS placeholders are read from the environment
    assert "slurm_account=m1234" in out and "qos=regular" in out, out[-3000:]


def test_executor_plugin_runs_the_pipeline_as_slurm_jobs(slurm, local_run, tmp_path_factory):
    wd = _workdir(tmp_path_factory, "plugin")
    proc = _snakemake(wd, "--profile", str(REPO / "slurm" / "profile-local"), targets=PLUGIN_TARGETS, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:] + slurm.logs()
    # every rule job went through sbatch (the plugin logs the Slurm job id of each)
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", out)
    assert len(submitted) == 1, out[-3000:]
    _assert_two_ranks(wd / "logs" / "phantom" / "phantom.log")
    _assert_same_stores(wd, local_run, samples=("phantom",))
    # the rule ran as `srun -n 2` inside its own 2-task allocation
    jobcomp = (slurm.log_dir / "jobcomp.log").read_text()
    line = [l for l in jobcomp.splitlines() if f"JobId={submitted[0]} " in l][-1]  # ids restart with the cluster
    assert "JobState=COMPLETED" in line and "ProcCnt=2" in line, line


def test_in_allocation_head_job_runs_mpi_rules_as_srun_steps(slurm, local_run, tmp_path_factory):
    wd = _workdir(tmp_path_factory, "alloc")
    out_file = wd / "head.out"
    env = _env(BATTERYTWIN_REPO=str(REPO), BATTERYTWIN_WORKDIR=str(wd),
               BATTERYTWIN_CONFIG=f"{REPO / 'config.yaml'} {wd / 'test.yaml'}", BATTERYTWIN_TARGETS=" ".join(TARGETS))
    job = _submit([*TINY_ALLOCATION, "-o", str(out_file), str(SBATCH)], env)
    state = _wait_end(job, 300)
    head = out_file.read_text()
    assert state == "COMPLETED", head[-5000:] + slurm.logs()
    assert "2 cores, 0 GPUs" in head and "snakemake exited with 0" in head, head[-3000:]
    assert re.search(r"srun -n 2 batterytwin phantom", head), head[-3000:]
    for sample in SAMPLES:
        _assert_two_ranks(wd / "logs" / sample / "phantom.log")
    _assert_same_stores(wd, local_run)


# Preemption: the real segment rules (workflow/rules/segment.smk) with a network small enough for
# a CPU, trained by 2 ranks started with srun inside the head job of slurm/batterytwin.sbatch.
TRAIN_STEPS = 200
SEGMENT_CONFIG = f"""\
segment:
  input: volume
  uncertainty: false
  model: {{channels: [4, 8], strides: [2], num_res_units: 0}}
  train: {{steps: {TRAIN_STEPS}, batch_size: 2, patch_size: 16, checkpoint_every: 10, val_every: 100000,
          warmup_steps: 2, threads: 1, init_from: null}}
"""
# The rules the preemption test needs, from the repository's rule files (rule all of the real
# Snakefile is the whole pipeline; this keeps the test to the training job).
TRAIN_SNAKEFILE = """\
include: "{repo}/workflow/rules/common.smk"
include: "{repo}/workflow/rules/ingest.smk"
include: "{repo}/workflow/rules/segment.smk"
"""
MODEL = "results/models/segment/model.pt"
TRAIN_LOG = "logs/models/train_seg.log"
CHECKPOINT = "work/models/segment/checkpoint.pt"


def test_preempted_training_checkpoints_exits_cleanly_and_resumes(slurm, local_run, tmp_path_factory):
    wd = _workdir(tmp_path_factory, "preempt")
    cfg = wd / "test.yaml"
    cfg.write_text(TEST_CONFIG + "  train_seg: {tasks: 2}\n" + SEGMENT_CONFIG)  # resources is TEST_CONFIG's last block
    repo = wd / "workflow"
    repo.mkdir()
    (repo / "Snakefile").write_text(TRAIN_SNAKEFILE.format(repo=REPO))
    shutil.copytree(local_run / "results", wd / "results")  # the phantoms: only the training runs here
    out_file = wd / "head.out"
    env = _env(BATTERYTWIN_REPO=str(repo), BATTERYTWIN_WORKDIR=str(wd), BATTERYTWIN_TARGETS=MODEL,
               BATTERYTWIN_CONFIG=f"{REPO / 'config.yaml'} {cfg}")
    args = [*TINY_ALLOCATION, "-o", str(out_file), str(SBATCH)]
    log = wd / TRAIN_LOG

    # 1. USR1 to the running training step (what --signal=USR1@120 does): checkpoint, exit 75.
    job = _submit(args, env)
    _wait_for(lambda: _trained_step(log) >= 10, 180, "the first training steps")
    step_ids = _steps(job)
    assert step_ids, f"no srun step in job {job}"
    subprocess.run(["scancel", "--signal=USR1", step_ids[-1]], check=True, capture_output=True, timeout=15)
    state = _wait_end(job, 120)
    head, text = out_file.read_text(), log.read_text()
    stopped = re.search(rf"preempted at step (\d+)/{TRAIN_STEPS}: checkpoint saved", text)
    assert stopped, text[-3000:] + head[-3000:]
    first_stop = int(stopped.group(1))
    assert 10 <= first_stop < TRAIN_STEPS and "Traceback" not in text, text[-3000:]
    assert state == "FAILED" and "exit status 75" in head, head[-3000:]  # the rule failed, Snakemake stopped
    assert (wd / CHECKPOINT).exists() and not (wd / MODEL).exists()

    # 2. Submit again: it resumes from that checkpoint. Then the time-limit warning to the batch
    #    shell (--signal=B:USR1@300): the launcher forwards it, the step checkpoints, the job
    #    requeues itself and its next run resumes again and finishes.
    job = _submit(args, env)
    _wait_for(lambda: f"at step {first_stop} of {TRAIN_STEPS}" in (log.read_text() if log.exists() else ""),
              180, "the resumed training")
    _wait_for(lambda: _trained_step(log) >= first_stop + 10, 120, "training after the resume")
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(job)], check=True, capture_output=True, timeout=15)
    state = _wait_end(job, 300, release_requeued=True)
    head, text = out_file.read_text(), log.read_text()
    assert state == "COMPLETED", head[-4000:] + text[-2000:] + slurm.logs()
    assert "received SIGUSR1" in head and "requeueing to resume" in head and "restart 1;" in head, head[-4000:]
    resumed = re.search(rf"resuming from \S+ at step (\d+) of {TRAIN_STEPS}", text)
    assert resumed and int(resumed.group(1)) > first_stop, text[-3000:]  # the requeued run's own resume
    metrics = json.loads((wd / "results/models/segment/metrics.json").read_text())
    # no step lost or repeated across the two interruptions, trained by 2 ranks
    assert [p["step"] for p in metrics["loss_curve"]] == list(range(1, TRAIN_STEPS + 1))
    assert metrics["world_size"] == 2 and metrics["steps"] == TRAIN_STEPS
    assert (wd / MODEL).exists()
