"""Reduce `snakemake -n -p --forceall TARGET` output to sorted lines (rule | outputs | shell command), so that
two plans can be compared with diff, e.g. before and after a refactor that must not change what runs:

    snakemake -n -p --forceall paper > before.txt 2>&1   # (then change the code)
    snakemake -n -p --forceall paper > after.txt 2>&1
    diff <(python tools/plan_jobs.py before.txt) <(python tools/plan_jobs.py after.txt)

Runs of spaces in a command count as one.
"""
import re
import sys


def plan_jobs(text: str) -> list[str]:
    jobs = []
    for block in re.split(r"\n\[[^\]]+\]\n", text)[1:]:  # one block per job, after its timestamp line
        rule = re.search(r"^(?:local)?rule (\S+):", block, re.M)
        outputs = re.search(r"^\s+output: (.*)$", block, re.M)
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append(" | ".join([rule[1] if rule else "?", outputs[1] if outputs else "",
                                " ".join(command[1].split()) if command else ""]))
    return sorted(jobs)


if __name__ == "__main__":
    with open(sys.argv[1]) as file:
        print("\n".join(plan_jobs(file.read())))
