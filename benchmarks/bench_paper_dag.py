"""Planning the `paper` DAG: wall time of `snakemake -n paper`, plain and with the SLURM profile.

Usage: python benchmarks/bench_paper_dag.py [--repeats 3]

Runs from the repository root on a copy of config.yaml in a temporary working directory (nothing
exists yet, so every one of the ~1000 jobs is planned) and prints the median wall time of each.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import median_time  # benchmarks/timing.py

REPO = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory() as workdir:
        shutil.copy(REPO / "config.yaml", workdir)
        for label, extra in (("snakemake -n paper", []), ("snakemake --profile slurm -n paper", ["--profile", "slurm"])):
            command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", workdir,
                       *extra, "-n", "--quiet", "rules", "--", "paper"]
            run = lambda: subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
            print(f"{label}: {median_time(run, repeats=args.repeats):.1f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
