# Stage 5: likelihood. The PF-ODE NLL (Eq. 8-9, truncated-normal dequantisation) over the test
# split, one job per (eta, shard); the variational bound (Eq. 6), one job per (eta, run) or, with
# vlb.runs_per_job > 1, per (eta, group of runs); a run's numbers are the same either way.


rule nll_shard:
    input:
        experts=expert_files,
        splits=rules.dataset.output.splits,
    output:
        "results/{experiment}/nll/{eta}/shard{shard}.csv",
    params:
        experts=experts_argument,
        nll=lambda w: experiment(w)["nll"],
        images=lambda w: f"--images {experiment(w)['nll']['images']}" if "images" in experiment(w)["nll"] else "",
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/nll/{eta}/shard{shard}.log",
    shell:
        "expertmerge nll {params.experts} --eta {wildcards.eta} --data {input.splits} --split test"
        " --shard {wildcards.shard} --shards {params.nll[shards]} {params.images} --rtol {params.nll[rtol]}"
        " --atol {params.nll[atol]} --dequantization {params.nll[dequantization]}"
        " --batch-size {params.nll[batch_size]} --threads {threads} --out {output} > {log} 2>&1"


rule vlb_run:
    input:
        experts=expert_files,
        splits=rules.dataset.output.splits,
    output:
        "results/{experiment}/vlb/{eta}/{runs}.json",
    params:
        experts=experts_argument,
        runs=vlb_run_seeds,
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/vlb/{eta}/{runs}.log",
    shell:
        "expertmerge vlb {params.experts} --eta {wildcards.eta} --data {input.splits} --split test"
        " --runs {params.runs} --threads {threads} --out {output} > {log} 2>&1"
