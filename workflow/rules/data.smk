# Stage 1: the data set, split once into train/validation/test and recorded in results.


rule dataset:
    output:
        splits=RESULTS + "/data/splits.npz",
        record=RESULTS + "/data/splits.json",
    params:
        data=lambda w: experiment(w)["data"],
    log:
        RESULTS + "/logs/dataset.log",
    shell:
        "expertmerge dataset --source {params.data[source]} --seed {params.data[seed]}"
        " --val-fraction {params.data[val_fraction]} --test-fraction {params.data[test_fraction]}"
        " --out {output.splits} > {log} 2>&1"
