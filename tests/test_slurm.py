"""A real one-node SLURM on localhost (issue 5): the workflow's slurm profile, end to end.

The session fixture brings up munged, slurmctld and slurmd (Debian ``slurm-wlm`` + ``munge``,
no slurmdbd, no cgroups, a fake GPU) with every file in a temporary directory: its own munge key
and socket, ``slurm.conf`` and ``gres.conf`` found through ``SLURM_CONF``, free ports, state and
spool directories. A tiny demo config (data and pretraining built locally first; then one FLYP
run, two evaluations and Table 2) runs through a profile derived from ``workflow/profiles/slurm``;
the test asserts that each remote job was an sbatch job that SLURM ran and that the table exists.
The daemons are stopped by PID at the end, also on failure.

Needs root and the packages (``make test`` installs them via ``make slurm-deps``; the fixture
tries ``apt-get install`` itself when they are missing). Elsewhere it skips, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "srun")
PARTITION = "ci"


@dataclass
class Slurm:
    """A running one-node cluster: the environment its clients need and where its files are."""

    env: dict[str, str]
    root: Path
    node: str
    partition: str

    def run(self, *command: str, timeout: float = 30) -> str:
        done = subprocess.run(command, env=self.env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(command)}: rc {done.returncode}\n{done.stdout}\n{self.logs()}"
        return done.stdout

    def logs(self, tail: int = 2000) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


def _binary(name: str) -> str | None:
    return shutil.which(name) or next((str(Path(d) / name) for d in ("/usr/sbin", "/usr/bin", "/sbin")
                                       if (Path(d) / name).exists()), None)


def _skip(reason: str) -> None:
    """Skip loudly: the warning shows in pytest's summary even without -rs."""
    message = f"the real SLURM test did not run: {reason}"
    warnings.warn(message, pytest.PytestWarning, stacklevel=2)
    pytest.skip(message)


def _ensure_packages() -> None:
    """The daemons and clients, installed with apt-get when missing (root only), else a loud skip."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if _binary(name) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        _skip(f"{', '.join(missing)} missing and not root, so `apt-get install {' '.join(PACKAGES)}` "
              "is impossible; install them (or run `make slurm-deps` as root)")
    if shutil.which("apt-get") is None:
        _skip(f"{', '.join(missing)} missing and no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = subprocess.run(f"apt-get update -qq && apt-get install -y -qq {' '.join(PACKAGES)}", shell=True,
                             env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    still = [name for name in (*DAEMONS, *CLIENTS) if _binary(name) is None]
    if install.returncode != 0 or still:
        _skip(f"`apt-get install {' '.join(PACKAGES)}` failed (rc {install.returncode}, missing {still}):\n"
              f"{install.stdout[-1500:]}")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each daemon by its PID (reverse start order), SIGKILL the ones that linger."""
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in reversed(processes):
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    if sys.platform != "linux":
        _skip("needs Linux (Debian slurm-wlm + munge)")
    if os.geteuid() != 0:
        _skip("needs root: slurmd runs jobs as their user, and the daemons run here as root")
    _ensure_packages()

    root = tmp_path_factory.mktemp("slurm")
    for name in ("munge", "state", "spool", "log", "run"):
        (root / name).mkdir(mode=0o700)
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory = max(1024, min(_memory_mb() * 3 // 4, 32000))
    ctld_port, slurmd_port = _free_ports(2)

    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    munge_socket = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=starft-ci
SlurmctldHost={node}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
MpiDefault=none
GresTypes=gpu
NodeName={node} CPUs={cpus} RealMemory={memory} Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    # slurmd looks for gres.conf beside slurm.conf; File=/dev/null makes a fake GPU count as present.
    (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File=/dev/null\n")
    env = {**os.environ, "SLURM_CONF": str(conf), "HF_HUB_OFFLINE": "1"}
    for name in [name for name in env if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))]:
        if name != "SLURM_CONF":
            del env[name]
    # The jobstep plugin (0.6.1) drops every SLURM_* variable but the job's identity before its
    # inner `srun`, SLURM_CONF included; a real site has /etc/slurm/slurm.conf (or configless
    # /run/slurm/conf), this cluster has neither, so the clients a job calls (srun; scontrol, with
    # which an interrupted training job requeues itself) are wrappers that restore the path.
    wrappers = root / "bin"
    wrappers.mkdir()
    for client in ("srun", "scontrol"):
        wrapper = wrappers / client
        wrapper.write_text(f'#!/bin/sh\nexport SLURM_CONF="{conf}"\nexec "{_binary(client)}" "$@"\n')
        wrapper.chmod(0o755)
    env["PATH"] = f"{wrappers}{os.pathsep}{env.get('PATH', '')}"
    cluster = Slurm(env=env, root=root, node=node, partition=PARTITION)

    processes: list[subprocess.Popen] = []

    def start(*command: str) -> None:
        log = open(root / "log" / f"{Path(command[0]).name}.out.log", "w")
        processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        log.close()

    try:
        start(_binary("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
              f"--pid-file={root}/run/munged.pid", f"--log-file={root}/log/munged.log",
              f"--seed-file={root}/munge/munged.seed")
        deadline = time.monotonic() + 15
        while not munge_socket.exists():
            assert processes[0].poll() is None and time.monotonic() < deadline, \
                f"munged did not start\n{cluster.logs()}"
            time.sleep(0.1)
        start(_binary("slurmctld"), "-D", "-f", str(conf))
        start(_binary("slurmd"), "-D", "-f", str(conf))
        deadline = time.monotonic() + 60
        state = ""
        while True:
            for process in processes:
                assert process.poll() is None, f"{process.args[0]} exited with {process.returncode}\n{cluster.logs()}"
            done = subprocess.run([_binary("sinfo"), "-h", "-n", node, "-o", "%T"], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            state = done.stdout.strip()
            if done.returncode == 0 and state == "idle":
                break
            assert time.monotonic() < deadline, f"node {node} not idle after 60 s: {state!r}\n{cluster.logs()}"
            time.sleep(0.5)
        yield cluster
    finally:
        try:  # a failed test may leave jobs running
            if len(processes) == len(DAEMONS) and processes[1].poll() is None:
                subprocess.run([_binary("scancel") or "scancel", "--partition", PARTITION], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        except (OSError, subprocess.SubprocessError):
            pass
        _stop(processes)


def test_slurm_cluster_runs_a_gpu_job(slurm: Slurm) -> None:
    job = slurm.run("sbatch", "--parsable", "-p", slurm.partition, "--gpus=1", "--mem=100", "-t", "1",
                    "-o", str(slurm.root / "hello.out"), "--wrap", "echo gpu=$CUDA_VISIBLE_DEVICES").strip()
    deadline = time.monotonic() + 30
    while "COMPLETED" not in (state := slurm.run("squeue", "-h", "-t", "all", "-j", job, "-o", "%T")):
        assert time.monotonic() < deadline and "FAIL" not in state, f"job {job}: {state}\n{slurm.logs()}"
        time.sleep(0.3)
    assert (slurm.root / "hello.out").read_text().strip() == "gpu=0"


@dataclass
class Demo:
    """The tiny demo's data and pretrained weights, built once (locally) for the workflow tests."""

    config: dict
    weights: Path


@pytest.fixture(scope="module")
def demo(slurm: Slurm, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """tests/configs/demo-tiny.yaml, smaller still (zero-shot and FLYP, Table 2's ID column), its data
    and pretrained weights built locally once: each SLURM wave costs ~35 s here (two snakemake
    start-ups per job on 2 cores plus the plugin's status back-off), so the cluster runs keep to the
    GPU rules."""
    root = tmp_path_factory.mktemp("demo")
    config = yaml.safe_load((REPO / "tests" / "configs" / "demo-tiny.yaml").read_text())
    config["results"], config["data_root"] = str(root / "results"), str(root / "data")
    weights = root / "TinyCLIP-demo.pt"
    config["demo"].update(weights=str(weights), pretrain_steps=3,
                          sizes={"pretrain": 200, "train": 100, "val": 50, "test": 50, "group": 50, "sketch": 50,
                                 "rendition": 50})
    config["archs"] = {"TinyCLIP-demo": str(weights)}
    # train asks for the fake GPU (sbatch --gpus=1); the config still trains on the CPU.
    config["resources"]["train"].update(gpu=1, mem_mb=1000)
    config["resources"]["evaluate"].update(mem_mb=1000)
    table = config["tables"][2]
    table.update(methods=["zeroshot", "flyp"], columns=[{"label": "ID", "benchmark": "demo-id"}])
    table.pop("averages", None)
    config["tables"] = {2: table}
    del config["claims"]  # they compare methods and tables this smaller demo drops
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    prepare = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "-q", "--configfile", str(path),
                              "--", str(weights)], cwd=REPO, env=slurm.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert prepare.returncode == 0, prepare.stdout[-4000:]
    return Demo(config=config, weights=weights)


def _tiny_config(tmp_path: Path, demo: Demo, **train_set: object) -> Path:
    """The demo's config with its results under `tmp_path` (data and weights shared); `train_set`
    replaces settings of its train set (e.g. ``optim``)."""
    config = {**demo.config, "results": str(tmp_path / "results")}
    config["train_sets"] = {name: {**spec, **train_set} for name, spec in config["train_sets"].items()}
    path = tmp_path / "slurm-tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _test_profile(slurm: Slurm, tmp_path: Path) -> Path:
    """workflow/profiles/slurm with this cluster's partition, small resources, squeue status, short waits."""
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    profile["default-resources"] = {**profile["default-resources"], "slurm_partition": slurm.partition,
                                    "mem_mb": 500, "runtime": 10, "cpus_per_task": 1}
    profile.update({
        "jobs": 4,
        "retries": 0,
        "latency-wait": 5,
        # No slurmdbd here: sacct answers "accounting storage is disabled" and the plugin would lose
        # every job; squeue sees finished jobs for MinJobAge (600 s in slurm.conf).
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 2,
        "slurm-logdir": str(tmp_path / "slurm_logs"),
    })
    directory = tmp_path / "profile"
    directory.mkdir()
    (directory / "config.yaml").write_text(yaml.safe_dump(profile))
    return directory


@pytest.mark.slow
def test_workflow_runs_through_slurm(slurm: Slurm, demo: Demo, tmp_path: Path) -> None:
    config, profile = _tiny_config(tmp_path, demo), _test_profile(slurm, tmp_path)
    table = tmp_path / "results" / "table2.md"
    command = [sys.executable, "-m", "snakemake", "--profile", str(profile), "--configfile", str(config),
               "--", str(table)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=slurm.env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600)
    seconds = time.monotonic() - started
    log = done.stdout
    assert done.returncode == 0, f"{log[-6000:]}\n{slurm.logs()}"

    # (a) every remote job was an sbatch submission that SLURM ran to completion.
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    remote = {"train": 1, "evaluate": 2}
    assert len(submitted) == sum(remote.values()), log[-6000:]
    states = dict(line.split("|") for line in slurm.run("squeue", "-h", "-t", "all", "-o", "%i|%T").splitlines())
    names = dict(line.split("|", 1) for line in slurm.run("squeue", "-h", "-t", "all", "-o", "%i|%k").splitlines())
    ours = {jobid: names[jobid] for jobid in submitted.values()}
    assert all(states[jobid] == "COMPLETED" for jobid in ours), (states, log[-4000:])
    # The plugin's comment (rule_<rule>_wildcards_<...>) names each job's rule.
    rules = sorted(re.match(r"rule_([a-z_]+?)(?:_wildcards|$)", comment)[1] for comment in ours.values())
    assert rules == sorted(rule for rule, count in remote.items() for _ in range(count)), ours
    # The train job got the fake GPU, and SLURM kept each job's log under slurm-logdir.
    train = next(jobid for jobid, comment in ours.items() if comment.startswith("rule_train"))
    assert "gpu:1" in slurm.run("scontrol", "show", "job", train)
    logs = {path.stem for path in (tmp_path / "slurm_logs").rglob("*.log")}
    assert set(ours) <= logs, (sorted(logs), ours)

    # (b) the outputs exist: the trained run, both evaluations, the table with a number per row.
    runs = tmp_path / "results" / "runs"
    assert len(list(runs.rglob("best.pt"))) == 1 and len(list(runs.rglob("eval/demo-id.json"))) == 2
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "method" not in line.lower()]
    assert {row.split("|")[1].strip() for row in rows} == {"Zeroshot", "FLYP"}, table.read_text()
    assert all(re.search(r"\d+\.\d\d", row) for row in rows), table.read_text()
    print(f"workflow through SLURM: {len(submitted)} sbatch jobs, {seconds:.1f} s")


def _train_here(argv: list[str]) -> int:
    """`python -m stages.training ARGV` in this process, as the subprocess references ran it: one thread
    (OMP_NUM_THREADS=1, so the same kernels and the same bits) and no SLURM job variables in sight."""
    import torch

    from stages.training.__main__ import main as training_main

    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
            patch.delenv(name)
        torch.set_num_threads(1)
        return training_main(argv)


def _job_states(slurm: Slurm, job: str) -> str:
    done = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], env=slurm.env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else ""


@pytest.mark.slow
def test_interrupted_training_job_requeues_itself(slurm: Slurm, demo: Demo, tmp_path: Path) -> None:
    """A SLURM train job whose trainer is signalled mid-run (SIGTERM to the job's steps: what
    `--signal=TERM@lead` sends before the time limit, and preemption) checkpoints, requeues itself
    under the same job id, resumes, and ends with the uninterrupted run's weights; snakemake tracks
    it throughout, spends no retry, and run.json records the interruption."""
    import torch

    # FLYP, 2 epochs x 12 steps of 8 (~0.2 s a step here); no step checkpoint within the run.
    config = _tiny_config(tmp_path, demo, optim={"lr": 3.0e-5, "weight_decay": 0.1, "warmup_steps": 1, "epochs": 2,
                                                 "batch_size": 8, "max_steps_per_epoch": None})
    raw = yaml.safe_load(config.read_text())
    raw.update(checkpoint_every=1000, log_every=1)
    raw["resources"]["train"]["signal_lead_s"] = 120
    config.write_text(yaml.safe_dump(raw))
    profile = _test_profile(slurm, tmp_path)
    run_dir = tmp_path / "results" / "runs" / "TinyCLIP-demo-TinyCLIP-demo" / "fmnist-demo" / "flyp" / "-" / "-" / "-" / "seed0"
    command = [sys.executable, "-m", "snakemake", "--profile", str(profile), "--configfile", str(config),
               "--verbose", "--", str(run_dir / "best.pt")]
    output = tmp_path / "snakemake.out"
    started = time.monotonic()
    with open(output, "w") as sink:
        workflow = subprocess.Popen(command, cwd=REPO, env=slurm.env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        # The job's id, then its trainer's first logged step (its stop handlers are installed by then).
        deadline = time.monotonic() + 240
        job = None
        while job is None or not (run_dir / "train_log.jsonl").is_file() or not (run_dir / "train_log.jsonl").stat().st_size:
            assert workflow.poll() is None and time.monotonic() < deadline, output.read_text()[-6000:]
            found = re.search(r"submitted with SLURM jobid (\d+)", output.read_text())
            job = found[1] if found else None
            time.sleep(0.05)
        # Without --batch, SLURM signals every process of the job's steps: trainer, supervisor, snakemake.
        slurm.run("scancel", "--signal=TERM", job)
        seen = [_job_states(slurm, job)]
        while workflow.poll() is None:
            state = _job_states(slurm, job)
            if state != seen[-1]:
                seen.append(state)
            if state == "PENDING":
                # A requeued job waits 120 s (BeginTime) before SLURM starts it again; not here.
                subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], env=slurm.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            assert time.monotonic() < deadline + 120, output.read_text()[-6000:]
            time.sleep(0.2)
    finally:
        if workflow.poll() is None:
            workflow.kill()
            workflow.wait()
    seconds = time.monotonic() - started
    log = output.read_text()
    assert workflow.returncode == 0, f"{log[-6000:]}\n{slurm.logs()}"

    # One submission: the job was requeued by itself (same id, SLURM restarted it once), not
    # resubmitted by snakemake, which went on tracking it until it completed.
    assert re.findall(r"submitted with SLURM jobid (\d+)", log) == [job], log[-4000:]
    shown = slurm.run("scontrol", "show", "job", job)
    assert "JobState=COMPLETED" in shown and "Restarts=1" in shown and "Requeue=1" in shown, shown
    assert "PENDING" in seen and seen[-1] == "COMPLETED", seen
    # The profile asked for the early warning and requeueing (the plugin logs its sbatch call).
    sbatch = next(line for line in log.splitlines() if "sbatch call:" in line)
    assert "--signal=TERM@120" in sbatch and "--requeue" in sbatch and "--open-mode=append" in sbatch, sbatch
    # The job's SLURM log keeps both instances (appended); the rule's log is the resumed attempt's.
    job_log = next((tmp_path / "slurm_logs").rglob(f"{job}.log")).read_text()
    assert job_log.count("Building DAG of jobs") >= 2, job_log[-3000:]
    (train_log,) = (tmp_path / "results" / "logs" / "train").rglob("seed0.log")

    # run.json: one interruption, at the signalled step, resumed from that very step.
    record = json.loads((run_dir / "run.json").read_text())
    (interruption,) = record["interruptions"]
    assert interruption["reason"] == "SIGTERM", interruption
    assert 0 < interruption["step"] < record["total_steps"] == 24, interruption
    assert interruption["resumed_from"] == interruption["step"] and interruption["steps_lost"] == 0, interruption
    assert f"from step {interruption['step']}/24" in train_log.read_text()
    steps = [row["step"] for row in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines())
             if "loss" in row]
    assert steps == list(range(1, 25)), steps

    # The same run trained in one go, by the trainer's CLI directly (in this process, on one thread as
    # the job's OMP_NUM_THREADS=1: the same kernels, so the same bits): identical weights.
    direct = tmp_path / "direct"
    assert _train_here(["--config", str(run_dir / "train.yaml"), "--out", str(direct), "--set", "device=cpu",
                       "--set", "data.workers=0", "--set", f"data.data_root={demo.config['data_root']}"]) == 0
    interrupted, uninterrupted = (torch.load(path / "best.pt", weights_only=True)["state_dict"]
                                  for path in (run_dir, direct))
    assert interrupted.keys() == uninterrupted.keys()
    different = [key for key, value in uninterrupted.items() if not torch.equal(interrupted[key], value)]
    assert not different, different
    print(f"interrupted SLURM training: job {job} states {seen}, interrupted at step {interruption['step']}/24, "
          f"{interruption['steps_lost']} steps lost, weights identical; {seconds:.1f} s")


LR = 1e-5


def _srun_train_config(tmp_path: Path) -> Path:
    """A tiny StarFT run (2 steps of a global batch of 8, Star term on) as a training config file."""
    config = tiny_config("starft", spurious__decay="step", optim__epochs=1, optim__lr=LR, checkpoint_every=100,
                         log_every=1, keep_checkpoints=True).model_dump(mode="json")  # the test reads ckpt/last.pt
    config["spurious"]["bank"] = str(REPO / "descriptor_banks" / "official-code.json")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_two_task_srun_trains_like_one_process(slurm: Slurm, tmp_path: Path) -> None:
    """`srun -n2 python -m stages.training` is one DDP job (ranks, master and port from SLURM's
    environment, gloo on CPU) whose weights equal the one-process run's; two srun tasks that each
    start their own torch group are refused before writing anything."""
    import torch

    config = _srun_train_config(tmp_path)
    train = [sys.executable, "-m", "stages.training", "--config", str(config), "--out"]
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # The one-process reference through the same CLI, in this process (one thread, as the srun tasks).
    assert _train_here(["--config", str(config), "--out", str(tmp_path / "single")]) == 0
    srun = ["srun", "-p", slurm.partition, "-n2", "--mem=2000", "-t", "10", "--kill-on-bad-exit=1"]
    started = time.monotonic()
    done = subprocess.run([*srun, *train, str(tmp_path / "srun")], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{slurm.logs()}"
    run = json.loads((tmp_path / "srun" / "run.json").read_text())
    assert run["world_size"] == 2
    states = {name: torch.load(tmp_path / name / "ckpt" / "last.pt", weights_only=True) for name in ("single", "srun")}
    logs = [[json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in ("single", "srun")]
    assert [row["step"] for row in logs[1]] == [row["step"] for row in logs[0]] == [1, 2]
    # Step 1 runs on identical weights over the same global batch; step 2 after the same update.
    assert logs[1][0]["loss_clip"] == pytest.approx(logs[0][0]["loss_clip"], rel=1e-6)
    assert logs[1][1]["loss_clip"] == pytest.approx(logs[0][1]["loss_clip"], rel=1e-5)
    # The gradients, through AdamW's moments (a rank that missed the global batch or DDP's average
    # would be off by tens of percent). fp32 rounding is ~1e-6 of the largest entry after step 1;
    # by step 2 AdamW has turned the rounding noise of zero-gradient entries (attention key biases)
    # into ±lr weight differences, which move the second gradient by ~1e-3 of its largest entry.
    worst = 0.0
    for index, single_moments in states["single"]["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            want, got = single_moments[key], states["srun"]["optimizer"]["state"][index][key]
            worst = max(worst, float((got - want).abs().max() / want.abs().max().clamp_min(1e-30)))
    assert worst < 1e-2
    # AdamW moves an entry by at most ~lr per step: two runs differ by at most 2 x steps x lr.
    difference = max(float((states["srun"]["state_dict"][key] - value).abs().max())
                     for key, value in states["single"]["state_dict"].items())
    assert difference <= 2 * 2 * LR
    print(f"srun -n2 training: {seconds:.1f} s; AdamW moments within {worst:.1e} of the largest entry, "
          f"weights within {difference:.1e} (lr {LR:g}) of the one-process run")

    # Two tasks that each run torchrun --standalone would be two unrelated groups training the same run.
    copies = subprocess.run([*srun, sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "1", "-m", "stages.training", "--config", str(config),
                             "--out", str(tmp_path / "copies")], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert copies.returncode != 0
    assert "2 srun tasks each started their own group of 1 rank" in copies.stdout, copies.stdout[-3000:]
    assert not (tmp_path / "copies" / "run.json").exists()
