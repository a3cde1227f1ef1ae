# Stage 3: samples, one job per (sampler, eta, shard). Image i uses seed i, so every eta starts
# from the same noise (paired comparisons) and shards never depend on each other. Each shard also
# stores the FID features of its images, so the FID step never re-reads images.


rule sample_shard:
    input:
        experts=expert_files,
        features=feature_network_files,
    output:
        "results/{experiment}/samples/{sampler}/{eta}/shard{shard}.npz",
    params:
        experts=experts_argument,
        options=sampler_options,
        seeds=shard_seeds,
        batch_size=lambda w: experiment(w)["sampling"]["batch_size"],
        features=feature_arguments,
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/sample/{sampler}/{eta}/shard{shard}.log",
    shell:
        "expertmerge sample {params.experts} --eta {wildcards.eta} --sampler {wildcards.sampler}"
        " {params.options} --seeds {params.seeds} --batch-size {params.batch_size}"
        " {params.features} --threads {threads}"
        " --out {output} > {log} 2>&1"
