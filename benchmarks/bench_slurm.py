"""The SLURM executor's overhead against local execution, on the reduced demo of tests/test_slurm_cluster.py.

Usage (as root, the cluster up: `tools/local_slurm.sh up`): python benchmarks/bench_slurm.py [--profile DIR]

Runs the same config twice from nothing, in fresh folders: `snakemake --cores N` (N = the node's CPUs) and
`snakemake --profile profiles/slurm-local`. Prints both wall times and their ratio, and from sacct the SLURM
jobs' count, their summed run time (job-seconds: each job's run includes a Snakemake that re-reads the
workflow), the node's use (job-seconds / (wall x CPUs)) and the mean wait from submission to start. That is
what to size `jobs:` and the status interval by: a job shorter than the status interval costs more in
waiting than in running.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_pipeline import write_config  # noqa: E402
from test_slurm_cluster import MISSING, cluster_config, jobs_of  # noqa: E402


def timed(command, cwd) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=str(REPO / "profiles" / "slurm-local"))
    args = parser.parse_args()
    if MISSING:
        sys.exit(f"bench_slurm: {MISSING}")
    cpus = int(subprocess.run(["sinfo", "-h", "-p", "gpu", "-o", "%c"], capture_output=True, text=True).stdout.split()[0])
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    with tempfile.TemporaryDirectory() as local, tempfile.TemporaryDirectory() as cluster:
        for folder in (local, cluster):
            write_config(Path(folder), cluster_config())
        local_wall = timed([*snakemake, "--cores", str(cpus)], local)
        slurm_wall = timed([*snakemake, "--profile", args.profile], cluster)
        jobs = jobs_of(Path(cluster))
    ids = ",".join(job["JobIDRaw"] for job in jobs)
    timing = {}
    for line in subprocess.run(["sacct", "-X", "-n", "-P", "-j", ids, "-o", "JobIDRaw,ElapsedRaw,Submit,Start"],
                               capture_output=True, text=True, check=True).stdout.splitlines():
        job, elapsed, submit, start = line.split("|")
        timing[job] = (int(elapsed), seconds(start) - seconds(submit))  # every job of a finished run started
    job_seconds = sum(timing[job["JobIDRaw"]][0] for job in jobs)
    waits = [timing[job["JobIDRaw"]][1] for job in jobs]
    print(f"reduced demo on one node of {cpus} CPUs, {len(jobs)} SLURM jobs")
    print(f"local (--cores {cpus}): wall {local_wall:.0f} s")
    print(f"slurm-local profile: wall {slurm_wall:.0f} s, {slurm_wall / local_wall:.2f}x the local wall time")
    print(f"job-seconds {job_seconds} (mean {job_seconds / len(jobs):.1f} s a job); node use "
          f"{job_seconds / (slurm_wall * cpus):.0%} of wall x CPUs")
    print(f"submission to start: mean {statistics.mean(waits):.1f} s, median {statistics.median(waits):.1f} s, "
          f"max {max(waits):.0f} s")


if __name__ == "__main__":
    main()
