# Stage 7: the paper's own layout across data sets (config.yaml's `paper`): Tables 1, 2 and 4 with
# CIFAR-10 and ImageNet32 side by side, and Tables 3 and 5 (the paper's literature rows with this
# pipeline's measured rows). Target `paper` builds these and every per-experiment table and figure.


rule paper:
    input:
        [target for name in config["paper"] for target in experiment_targets(name)],
        [paths.PAPER_TABLE.format(number=number) + suffix for number in paper_numbers() for suffix in paths.TABLE_SUFFIXES],


rule paper_table:
    input:
        unpack(paper_table_files),
    output:
        csv=report(f"{paths.PAPER_TABLE}.csv", caption="../report/paper_table.rst", category="Paper"),
        md=f"{paths.PAPER_TABLE}.md",
        tex=f"{paths.PAPER_TABLE}.tex",
    params:
        arguments=lambda w: rule_arguments.paper_table_arguments(config, w.number, paper_table_files(w)),
    wildcard_constraints:
        number=numbers_pattern(paper_numbers(literature=False)),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("table{number}", under=paths.PAPER),
    shell:
        "expertmerge paper-table {params.arguments} --out {output.csv:q} > {log:q} 2>&1"


rule literature_table:
    input:
        unpack(literature_table_files),
    output:
        csv=report(f"{paths.PAPER_TABLE}.csv", caption="../report/literature_table.rst",
                   category="Paper"),
        md=f"{paths.PAPER_TABLE}.md",
        tex=f"{paths.PAPER_TABLE}.tex",
    params:
        arguments=lambda w: rule_arguments.literature_table_arguments(config, w.number, literature_table_files(w)),
    wildcard_constraints:
        number=numbers_pattern(paper_numbers(literature=True)),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("table{number}", under=paths.PAPER),
    shell:
        "expertmerge literature-table {params.arguments} --out {output.csv:q} > {log:q} 2>&1"
