# Stage 1: the data. Downloads are fetched once and checked against config.yaml's checksums (a file
# placed by hand is checked when it is read); each data set is split once and recorded in results.


rule fetch:
    output:
        f"{DOWNLOAD_DIR}/{{download}}",
    params:
        arguments=lambda w: rule_arguments.fetch_arguments(config, w.download),
    wildcard_constraints:
        download=DOWNLOAD_NAMES,
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/logs/fetch/{download}.log",
    shell:
        "expertmerge fetch {params.arguments} --out {output:q} > {log:q} 2>&1"


rule dataset:
    input:
        unpack(data_files),
    output:
        splits="results/{experiment}/data/splits.npz",
        record="results/{experiment}/data/splits.json",
    params:
        arguments=lambda w: rule_arguments.dataset_arguments(config, w.experiment),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/dataset.log",
    shell:
        "expertmerge dataset {params.arguments} --out {output.splits:q} > {log:q} 2>&1"
