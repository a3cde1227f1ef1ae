# Stage 5: likelihood. The PF-ODE NLL (Eq. 8-9, truncated-normal dequantisation) over the test
# split, one job per (eta, shard); the variational bound (Eq. 6), one job per (eta, run) or, with
# vlb.runs_per_job > 1, per (eta, group of runs); a run's numbers are the same either way.

from expertmerge import paths


rule nll_shard:
    input:
        experts=expert_files,
        splits=rules.dataset.output.splits,
        trunk=lambda w: trunk_start_files(w, "nll"),
    output:
        paths.NLL_SHARD,
    params:
        arguments=lambda w: rule_arguments.nll_shard_arguments(config, w.experiment, w.eta, w.shard, splits_file(w)),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("nll/{eta}/shard{shard}"),
    shell:
        "expertmerge nll {params.arguments} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule vlb_run:
    input:
        experts=expert_files,
        splits=rules.dataset.output.splits,
    output:
        paths.VLB_JOB,
    params:
        arguments=lambda w: rule_arguments.vlb_run_arguments(config, w.experiment, w.eta, w.runs, splits_file(w)),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("vlb/{eta}/{runs}"),
    shell:
        "expertmerge vlb {params.arguments} --threads {threads} --out {output:q} > {log:q} 2>&1"
