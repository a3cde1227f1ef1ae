# Stage 3: samples, one job per (sampler, eta, shard). Image i uses seed i, so every eta starts
# from the same noise (paired comparisons) and shards never depend on each other. Each shard also
# stores the FID features of its images, so the FID step never re-reads images.


rule sample_shard:
    input:
        experts=expert_files,
        classifier="results/{experiment}/fid/classifier.safetensors",
    output:
        "results/{experiment}/samples/{sampler}/{eta}/shard{shard}.npz",
    params:
        experts=experts_argument,
        options=sampler_options,
        seeds=shard_seeds,
        batch_size=lambda w: experiment(w)["sampling"]["batch_size"],
        classifier=lambda w: f"results/{w.experiment}/fid/classifier",
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/sample/{sampler}/{eta}/shard{shard}.log",
    shell:
        "expertmerge sample {params.experts} --eta {wildcards.eta} --sampler {wildcards.sampler}"
        " {params.options} --seeds {params.seeds} --batch-size {params.batch_size}"
        " --features-kind digits-classifier --features {params.classifier} --threads {threads}"
        " --out {output} > {log} 2>&1"
