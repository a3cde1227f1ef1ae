"""The tables by number: each is one builder function plus one declaration here. The CLI (`expertmerge table`,
`paper-table`, `literature-table`), the workflow's table rules (generated from the declarations in
workflow/rules/report.smk and paper.smk), the targets and the report's captions read the declarations, so
adding a table is one function and one `register` call (from a plugin: `expertmerge.plugins`).

A declaration says, without importing pandas:
* `number`: Table <number>: the CLI's --table and the files table<number>.csv/.md/.tex;
* `title`: one line, what it shows;
* `reads`: the result kinds it is built from (RESULT_FILES: nll, fid, vlb), handed to its builders in this
  order; `optional`: kinds handed by keyword where an experiment has them (Table 4's `predicted` VLB, where
  a loss profile is configured);
* `build`: "module:function"(*records, **optional) -> DataFrame, the table of one experiment
  (results/<experiment>/tables), or None for a table of the paper target alone;
* `paper`: "module:function"(number, {data set title: records}) -> DataFrame, the paper's layout with the
  data sets side by side (results/paper/tables), or None where the paper target has it per data set only;
* `literature`: the paper's literature tables (3, 5): `paper` is then called with every kind's records per
  data set (`expertmerge literature-table`);
* `caption`: its caption for `snakemake --report`, a file of workflow/report/ (or an absolute path).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from . import paths

# The result files a table can read, per experiment, and the record kind (`expertmerge.records`) each holds.
RESULT_FILES = {"nll": paths.NLL_SHARD, "fid": paths.FID, "vlb": paths.VLB_JOB, "predicted": paths.PREDICTED_VLB}
RECORD_COLUMN = {"nll": "bpd", "fid": "fid", "vlb": "vlb", "predicted": "predicted_vlb"}


@dataclass(frozen=True)
class Table:
    number: int
    title: str
    reads: tuple[str, ...]
    build: str | Callable | None
    paper: str | Callable | None = None
    caption: str = ""
    optional: tuple[str, ...] = field(default=())
    literature: bool = False

    @property
    def per_experiment(self) -> bool:
        return self.build is not None

    def builder(self) -> Callable:
        return _resolve(self.build)

    def paper_builder(self) -> Callable:
        return _resolve(self.paper)


def _resolve(reference: str | Callable) -> Callable:
    if callable(reference):
        return reference
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


TABLES: dict[int, Table] = {}


def register(table: Table) -> Table:
    """Add (or replace) a table; it reads known result kinds and is built per experiment, for the paper, or both."""
    unknown = sorted(set(table.reads + table.optional) - set(RESULT_FILES))
    if unknown or not table.reads:
        raise ValueError(f"table {table.number}: reads {unknown or 'nothing'}; the result kinds are {', '.join(RESULT_FILES)}")
    if table.build is None and table.paper is None:
        raise ValueError(f"table {table.number}: give a builder per experiment (build), for the paper (paper), or both")
    TABLES[int(table.number)] = table
    return table


def unregister(number: int) -> None:
    TABLES.pop(int(number), None)


def get_table(number) -> Table:
    try:
        return TABLES[int(number)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"there is no Table {number!r}; the tables are {', '.join(map(str, TABLES))}") from None


def experiment_tables() -> list[Table]:
    """Tables every experiment has (results/<experiment>/tables), in number order."""
    return [TABLES[n] for n in sorted(TABLES) if TABLES[n].per_experiment]


def paper_numbers(literature: bool | None = None) -> list[int]:
    """The paper target's tables (results/paper/tables): the side-by-side ones (literature False), the
    literature ones (True), or both (None)."""
    return [n for n in sorted(TABLES) if TABLES[n].paper is not None
            and (literature is None or TABLES[n].literature == literature)]


def numbers_pattern(numbers) -> str:
    """A wildcard constraint matching exactly these table numbers ("(?!)" matches none)."""
    return "|".join(map(str, numbers)) or "(?!)"


register(Table(1, "test NLL (bits/dim, PF-ODE) and NFE per eta", ("nll",), "expertmerge.tables:table1",
               "expertmerge.tables:paper_table1", "table1.rst"))
register(Table(2, "FID and NFE per eta, one column group per sampler", ("fid",), "expertmerge.tables:table2",
               "expertmerge.tables:paper_table2", "table2.rst"))
register(Table(3, "the paper's comparison with prior work, and this pipeline's rows", ("nll", "vlb", "fid"), None,
               "expertmerge.literature:literature_table", "literature_table.rst", literature=True))
register(Table(4, "the variational bound (Eq. 6) per eta, mean and std over runs", ("vlb",), "expertmerge.tables:table4",
               "expertmerge.tables:paper_table4", "table4.rst", optional=("predicted",)))
register(Table(5, "Table 3 extended with the paper's Table 5 rows", ("nll", "vlb", "fid"), None,
               "expertmerge.literature:literature_table", "literature_table.rst", literature=True))
