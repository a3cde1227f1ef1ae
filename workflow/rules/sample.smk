# Stage 3: samples, one job per (sampler, eta, shard). Image i uses seed i, so every eta starts
# from the same noise (paired comparisons) and shards never depend on each other. Each shard also
# stores the FID features of its images, so the FID step never re-reads images.


def sampler_options(wildcards):
    sampling = experiment(wildcards)["sampling"]
    if wildcards.sampler == "ode":
        return f"--rtol {sampling['ode']['rtol']} --atol {sampling['ode']['atol']}"
    return f"--steps {sampling['ancestral']['steps']}"


def shard_seeds(wildcards):
    sampling = experiment(wildcards)["sampling"]
    start, stop = shard_ranges(sampling["num_samples"], sampling["shard_size"])[int(wildcards.shard)]
    return f"{start}:{stop}"


rule sample_shard:
    input:
        experts=expert_files,
        classifier=RESULTS + "/fid/classifier.safetensors",
    output:
        RESULTS + "/samples/{sampler}/{eta}/shard{shard}.npz",
    params:
        experts=experts_argument,
        options=sampler_options,
        seeds=shard_seeds,
        batch_size=lambda w: experiment(w)["sampling"]["batch_size"],
        classifier=lambda w: f"results/{w.experiment}/fid/classifier",
    threads: 1
    log:
        RESULTS + "/logs/sample/{sampler}/{eta}/shard{shard}.log",
    shell:
        "expertmerge sample {params.experts} --eta {wildcards.eta} --sampler {wildcards.sampler}"
        " {params.options} --seeds {params.seeds} --batch-size {params.batch_size}"
        " --features {params.classifier} --threads {threads} --out {output} > {log} 2>&1"
