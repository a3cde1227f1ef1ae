"""`python -m expertmerge` is the `expertmerge` command (torchrun launches it this way)."""
import sys

from .cli import main

sys.exit(main())
