"""Reduce `snakemake -n -p --forceall TARGET` output to sorted lines (rule | outputs | shell command), so two
plans can be compared with diff (e.g. before and after a refactor that must not change what runs)."""
import re, sys
text = open(sys.argv[1]).read()
jobs = []
for block in re.split(r"\n\[[^\]]+\]\n", text)[1:]:
    rule = re.search(r"^(?:local)?rule (\S+):", block, re.M)
    out = re.search(r"^\s+output: (.*)$", block, re.M)
    cmd = re.search(r"^Shell command: (.*)$", block, re.M)
    jobs.append(f"{rule[1] if rule else '?'} | {out[1] if out else ''} | {' '.join(cmd[1].split()) if cmd else ''}")
print("\n".join(sorted(jobs)))
