"""Wall time and peak memory (sum of RSS over the whole process tree) of the demo: `snakemake --cores all`.

Usage: python benchmarks/bench_demo.py [--workdir DIR] [-- extra snakemake args]
Runs in a fresh working directory (default: a temp dir with this repo's config.yaml), so it
measures a cold run from nothing. Also times a dry-run and a no-op re-run afterwards.
"""
import argparse
import os
import shutil
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
    print(f"demo: wall {wall:.0f} s, peak RSS of the process tree {peak / 2**30:.2f} GiB, "
          f"{os.cpu_count()} CPUs, in {workdir}")
    for name, extra in (("dry-run (-n)", ["-n"]), ("no-op re-run", ["--cores", "all"])):
        code, wall, _, output = run([*snakemake, *extra], workdir, env)
        print(f"{name}: {wall:.1f} s, exit {code}, {'nothing to do' if 'Nothing to be done' in output else 'had work'}")


if __name__ == "__main__":
    main()
