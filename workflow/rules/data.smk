# Stage 1: the data set, split once into train/validation/test and recorded in results.


rule dataset:
    output:
        splits="results/{experiment}/data/splits.npz",
        record="results/{experiment}/data/splits.json",
    params:
        data=lambda w: experiment(w)["data"],
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/dataset.log",
    shell:
        "expertmerge dataset --source {params.data[source]} --seed {params.data[seed]}"
        " --val-fraction {params.data[val_fraction]} --test-fraction {params.data[test_fraction]}"
        " --out {output.splits} > {log} 2>&1"
