# Stage 1: the data. Downloads are fetched once and checked against config.yaml's checksums (a file
# placed by hand is checked when it is read); each data set is split once and recorded in results.

from expertmerge import paths


rule fetch:
    output:
        paths.fill(paths.DOWNLOAD, download_dir=DOWNLOAD_DIR),
    params:
        arguments=lambda w: rule_arguments.fetch_arguments(config, w.download),
    wildcard_constraints:
        download=DOWNLOAD_NAMES,
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("fetch/{download}", under=paths.RESULTS),
    shell:
        "expertmerge fetch {params.arguments} --out {output:q} > {log:q} 2>&1"


rule dataset:
    input:
        unpack(data_files),
    output:
        splits=paths.SPLITS,
        record=paths.SPLITS_SUMMARY,
    params:
        arguments=lambda w: rule_arguments.dataset_arguments(config, w.experiment),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("dataset"),
    shell:
        "expertmerge dataset {params.arguments} --out {output.splits:q} > {log:q} 2>&1"
