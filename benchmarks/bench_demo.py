"""Wall time and peak memory (sum of RSS over the whole process tree) of the demo: `snakemake --cores all`.

Usage: python benchmarks/bench_demo.py [--workdir DIR] [-- extra snakemake args]
Runs in a fresh working directory (default: a temp dir with this repo's config.yaml), so it
measures a cold run from nothing. Also prints the CPU time of all jobs and an estimate of the share
spent starting them: each job that runs a network pays what a process pays that only starts Python,
imports torch and the package and loads both experts; each aggregation job (FID from features,
tables, figures, the summary: no torch) what a process pays that imports the package, pandas and
matplotlib (medians of 5). Times a dry-run and a no-op re-run afterwards.
"""
import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(command, cwd, env):
    start, peak = time.perf_counter(), 0
    process = psutil.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(process))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    output = process.communicate()[0]
    done.set()
    watcher.join()
    return process.returncode, time.perf_counter() - start, peak, output


TORCH_FREE_RULES = {"fid", "table1", "table2", "table4", "summary", "figure_tradeoff", "figure_fixed_noise",
                    "figure_samples", "all"}
TORCH_STARTUP = ("import torch; torch.set_num_threads(1); import expertmerge.cli, expertmerge.likelihood, "
                 "expertmerge.sampling; from expertmerge.experts.checkpoint import load_expert; "
                 "[load_expert(s) for s in {stems!r}]")
PLAIN_STARTUP = "import expertmerge.cli, expertmerge.frechet, expertmerge.tables, expertmerge.figures"


def startup_seconds(workdir: Path, code: str, repeats: int = 5) -> float:
    """Median wall time of a process that runs `code`: what a job does before its own work (the demo's
    expert checkpoints are formatted in as {stems})."""
    stems = sorted({str(path.with_suffix("")) for path in (workdir / "results").glob("*/experts/*/*.safetensors")})
    code = code.format(stems=stems)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="expertmerge-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.yaml").exists():
        shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    code, wall, peak, output = run([*snakemake, "--cores", "all", *args.extra], workdir, env)
    if code != 0:
        print(output[-5000:])
        sys.exit(f"demo failed with exit code {code}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every finished descendant, jobs included
    cpu = usage.ru_utime + usage.ru_stime
    print(f"demo: wall {wall:.0f} s, peak RSS of the process tree {peak / 2**30:.2f} GiB, "
          f"{os.cpu_count()} CPUs, in {workdir}")
    rules = re.findall(r"^(?:local)?rule (\w+):", output, flags=re.M)
    light = sum(rule in TORCH_FREE_RULES for rule in rules)
    heavy = len(rules) - light
    torch_startup, plain_startup = startup_seconds(workdir, TORCH_STARTUP), startup_seconds(workdir, PLAIN_STARTUP)
    total = heavy * torch_startup + light * plain_startup
    print(f"CPU time of all jobs {cpu:.0f} s; start-up {total:.0f} s ({100 * total / cpu:.0f}%): {heavy} jobs x "
          f"{torch_startup:.2f} s with torch and {light} aggregation jobs x {plain_startup:.2f} s without")
    for name, extra in (("dry-run (-n)", ["-n"]), ("no-op re-run", ["--cores", "all"])):
        code, wall, _, output = run([*snakemake, *extra], workdir, env)
        print(f"{name}: {wall:.1f} s, exit {code}, {'nothing to do' if 'Nothing to be done' in output else 'had work'}")


if __name__ == "__main__":
    main()
