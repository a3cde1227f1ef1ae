"""Copy the demo's results into README.md: the block between the demo-results markers becomes
results/digits/tables/summary.md (written by the pipeline's `summary` rule), and the loss-profile
figure is copied to docs/. Run after `snakemake --cores all`; tests/test_readme.py checks that the
README's numbers are the pipeline's.

Usage: python tools/readme_results.py [--results results/digits]
"""
import argparse
import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- demo-results: begin", "<!-- demo-results: end -->"
BLOCK = re.compile(re.escape(BEGIN) + r".*?-->\n(.*?)" + re.escape(END), re.S)


def readme_block(text: str) -> str:
    """The generated block of a README text."""
    found = BLOCK.search(text)
    if not found:
        raise ValueError(f"README.md has no block between {BEGIN!r} and {END!r}")
    return found.group(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/digits", type=Path)
    args = parser.parse_args()
    summary = (args.results / "tables" / "summary.md").read_text()
    readme = REPO / "README.md"
    text = readme.read_text()
    readme_block(text)  # fails clearly if the markers are missing
    header = f"{BEGIN}: results/digits/tables/summary.md of a demo run, copied by tools/readme_results.py -->\n"
    readme.write_text(BLOCK.sub(lambda _: header + summary + END, text))
    (REPO / "docs").mkdir(exist_ok=True)
    shutil.copy(args.results / "figures" / "loss_profile.png", REPO / "docs" / "loss_profile.png")
    print(f"README.md: results block from {args.results}; docs/loss_profile.png copied")


if __name__ == "__main__":
    main()
