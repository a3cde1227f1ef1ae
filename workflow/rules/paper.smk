# Stage 7: the paper's own layout across data sets (config.yaml's `paper`): Tables 1, 2 and 4 with
# CIFAR-10 and ImageNet32 side by side, and Tables 3 and 5 (the paper's literature rows with this
# pipeline's measured rows). Target `paper` builds these and every per-experiment table and figure.


rule paper:
    input:
        [target for name in config["paper"] for target in experiment_targets(name)],
        expand("results/paper/tables/table{number}.{ext}", number=(1, 2, 3, 4, 5), ext=("csv", "md", "tex")),


rule paper_table:
    input:
        unpack(paper_table_files),
    output:
        csv=report("results/paper/tables/table{number}.csv", caption="../report/paper_table.rst", category="Paper"),
        md="results/paper/tables/table{number}.md",
        tex="results/paper/tables/table{number}.tex",
    params:
        arguments=lambda w: rule_arguments.paper_table_arguments(config, w.number, paper_table_files(w)),
    wildcard_constraints:
        number="1|2|4",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/paper/logs/table{number}.log",
    shell:
        "expertmerge paper-table {params.arguments} --out {output.csv:q} > {log:q} 2>&1"


rule literature_table:
    input:
        unpack(literature_table_files),
    output:
        csv=report("results/paper/tables/table{number}.csv", caption="../report/literature_table.rst",
                   category="Paper"),
        md="results/paper/tables/table{number}.md",
        tex="results/paper/tables/table{number}.tex",
    params:
        arguments=lambda w: rule_arguments.literature_table_arguments(config, w.number, literature_table_files(w)),
    wildcard_constraints:
        number="3|5",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/paper/logs/table{number}.log",
    shell:
        "expertmerge literature-table {params.arguments} --out {output.csv:q} > {log:q} 2>&1"
