# Stage 4: FID. The feature network (a digit classifier trained on the demo's training split, or
# clean-fid's legacy-TensorFlow Inception for the paper) and reference statistics of the whole
# training split; one FID per (sampler, eta) from its shards' features.


rule train_classifier:
    input:
        splits=rules.dataset.output.splits,
    output:
        weights="results/{experiment}/fid/classifier.safetensors",
        record="results/{experiment}/fid/classifier.json",
    params:
        arguments=lambda w: rule_arguments.train_classifier_arguments(config, w.experiment, splits_file(w)),
        stem=lambda w: f"results/{w.experiment}/fid/classifier",
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/train_classifier.log",
    shell:
        "expertmerge train-classifier {params.arguments} --threads {threads} --out {params.stem:q} > {log:q} 2>&1"


rule reference_statistics:
    input:
        splits=rules.dataset.output.splits,
        features=feature_network_files,
    output:
        "results/{experiment}/fid/reference.npz",
    params:
        arguments=lambda w: rule_arguments.reference_statistics_arguments(config, w.experiment, splits_file(w)),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/reference_statistics.log",
    shell:
        "expertmerge reference-stats {params.arguments} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule fid:
    input:
        reference=rules.reference_statistics.output,
        shards=lambda w: [
            f"results/{w.experiment}/samples/{w.sampler}/{w.eta}/shard{k}.npz"
            for k in sample_shards(w.experiment)
        ],
    output:
        "results/{experiment}/fid/{sampler}/{eta}.json",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/fid/{sampler}/{eta}.log",
    shell:
        "expertmerge fid --reference {input.reference:q} --shards {input.shards:q} --out {output:q} > {log:q} 2>&1"
