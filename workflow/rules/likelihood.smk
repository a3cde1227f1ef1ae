# Stage 5: likelihood. The PF-ODE NLL (Eq. 8-9, truncated-normal dequantisation) over the test
# split, one job per (eta, shard); the variational bound (Eq. 6), one job per (eta, run).


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
        "results/{experiment}/vlb/{eta}/run{run}.json",
    params:
        experts=experts_argument,
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/vlb/{eta}/run{run}.log",
    shell:
        "expertmerge vlb {params.experts} --eta {wildcards.eta} --data {input.splits} --split test"
        " --seed {wildcards.run} --threads {threads} --out {output} > {log} 2>&1"
