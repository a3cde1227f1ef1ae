# Stage 4: FID. The feature network (a digit classifier trained on the demo's training split, or
# clean-fid's legacy-TensorFlow Inception for the paper) and reference statistics of the whole
# training split; one FID per (sampler, eta) from its shards' features.

from expertmerge import paths


rule train_classifier:
    input:
        splits=rules.dataset.output.splits,
    output:
        weights=f"{paths.CLASSIFIER}.safetensors",
        record=f"{paths.CLASSIFIER}.json",
    params:
        arguments=lambda w: rule_arguments.train_classifier_arguments(config, w.experiment, splits_file(w)),
        stem=lambda w: paths.CLASSIFIER.format(experiment=w.experiment),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("train_classifier"),
    shell:
        "expertmerge train-classifier {params.arguments} --threads {threads} --out {params.stem:q} > {log:q} 2>&1"


rule reference_statistics:
    input:
        splits=rules.dataset.output.splits,
        features=feature_network_files,
    output:
        paths.REFERENCE,
    params:
        arguments=lambda w: rule_arguments.reference_statistics_arguments(config, w.experiment, splits_file(w)),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("reference_statistics"),
    shell:
        "expertmerge reference-stats {params.arguments} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule fid:
    input:
        reference=rules.reference_statistics.output,
        shards=lambda w: [
            paths.SAMPLE_SHARD.format(experiment=w.experiment, sampler=w.sampler, eta=w.eta, shard=k)
            for k in sample_shards(w.experiment)
        ],
    output:
        paths.FID,
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("fid/{sampler}/{eta}"),
    shell:
        "expertmerge fid --reference {input.reference:q} --shards {input.shards:q} --out {output:q} > {log:q} 2>&1"
