# Stage 3a: an eta sweep's shared trunks (expertmerge.trunks). Every merge samples with the quality expert down
# to its switch and integrates its NLL with the likelihood expert up to it, so each (path, shard) runs that
# part once, one job per anchor k/grid of the merged clock, each from the previous anchor's state; a merge's
# sample or NLL job then runs only its own tail from the anchor at its switch. The anchors do not depend on
# the configured etas: adding one plans its tail and at most the segments down (up) to its anchor, when the
# states are kept (config.yaml's keep_trunk_states). By default they are temporary; an eta added after they were
# removed regenerates the trunk down (up) to its anchor, and Snakemake re-runs every tail that reads a
# regenerated state (README: "Shared trunks").

from expertmerge import paths, sharing


rule trunk_samples:
    input:
        experts=both_expert_files,
        previous=lambda w: previous_trunk_files(w, w.path),
    output:
        trunk_output(paths.TRUNK_STATE),
    wildcard_constraints:
        path="|".join(path for path in sharing.DIRECTIONS if path != "nll"),
    params:
        arguments=lambda w: rule_arguments.trunk_segment_arguments(config, w.experiment, w.path, w.level, w.shard,
                                                                   splits_file(w)),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("trunks/{path}/level{level}/shard{shard}"),
    shell:
        "expertmerge sample {params.arguments} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule trunk_nll:
    input:
        experts=both_expert_files,
        previous=lambda w: previous_trunk_files(w, "nll"),
        splits=rules.dataset.output.splits,
    output:
        trunk_output(paths.fill(paths.TRUNK_STATE, path="nll")),
    params:
        arguments=lambda w: rule_arguments.trunk_segment_arguments(config, w.experiment, "nll", w.level, w.shard,
                                                                   splits_file(w)),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("trunks/nll/level{level}/shard{shard}"),
    shell:
        "expertmerge nll {params.arguments} --threads {threads} --out {output:q} > {log:q} 2>&1"
