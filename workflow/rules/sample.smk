# Stage 3: samples, one job per (sampler, eta, shard). Image i uses seed i, so every eta starts
# from the same noise (paired comparisons) and shards never depend on each other. Each shard also
# stores the FID features of its images, so the FID step never re-reads images.

from expertmerge import paths


rule sample_shard:
    input:
        experts=expert_files,
        features=feature_network_files,
        trunk=lambda w: trunk_start_files(w, w.sampler),
    output:
        paths.SAMPLE_SHARD,
    params:
        arguments=lambda w: rule_arguments.sample_shard_arguments(config, w.experiment, w.sampler, w.eta, w.shard),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("sample/{sampler}/{eta}/shard{shard}"),
    shell:
        "expertmerge sample {params.arguments} --threads {threads} --out {output:q} > {log:q} 2>&1"
