# Diagnostics and the choice of eta from data (per experiment with a `loss_profile` section): each
# expert's denoising loss L(gamma), the integrand of the VLB's diffusion term (Eq. 7), on one gamma grid
# over both experts' ranges, measured on the selection split in shards; the VLB it predicts for every
# eta; the VLB-optimal merge (eta "auto"), and of any named auto merge's experts; and their figures.

from expertmerge import paths


rule loss_profile_shard:
    input:
        experts=profiled_expert_files,
        splits=rules.dataset.output.splits,
    output:
        paths.LOSS_PROFILE_SHARD,
    params:
        arguments=lambda w: rule_arguments.loss_profile_shard_arguments(config, w.experiment, w.shard, splits_file(w)),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("loss_profile/shard{shard}"),
    shell:
        "expertmerge loss-profile {params.arguments} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule loss_profile:
    input:
        lambda w: expand(rules.loss_profile_shard.output, experiment=w.experiment, shard=loss_profile_shards(w.experiment)),
    output:
        paths.LOSS_PROFILE,
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("loss_profile"),
    shell:
        "expertmerge combine-profiles --inputs {input:q} --out {output:q} > {log:q} 2>&1"


rule auto_switch:
    input:
        rules.loss_profile.output,
    output:
        paths.AUTO_SWITCH,
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("auto_switch"),
    shell:
        "expertmerge auto-switch --profile {input:q} --out {output:q} > {log:q} 2>&1"


rule auto_merge:
    input:
        rules.loss_profile.output,
    output:
        paths.AUTO_MERGE,
    params:
        arguments=lambda w: rule_arguments.auto_merge_arguments(config, w.experiment, w.merge),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("auto_merge/{merge}"),
    shell:
        "expertmerge auto-merge --profile {input:q} {params.arguments} --out {output:q} > {log:q} 2>&1"


rule predict_vlb:
    input:
        profile=rules.loss_profile.output,
        splits=rules.dataset.output.splits,
        switches=auto_switch_files,
        merges=lambda w: rule_arguments.auto_merge_files(config, w.experiment),
    output:
        paths.PREDICTED_VLB,
    params:
        arguments=lambda w: rule_arguments.predict_vlb_arguments(config, w.experiment, splits_file(w)),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("predict_vlb"),
    shell:
        "expertmerge predict-vlb --profile {input.profile:q} {params.arguments} --out {output:q} > {log:q} 2>&1"


rule figure_predicted_vlb:
    input:
        vlb=vlb_files,
        predicted=rules.predict_vlb.output,
    output:
        png=report(f"{paths.fill(paths.FIGURE, figure='predicted_vlb')}.png", caption="../report/predicted_vlb.rst",
                   category="Figures", subcategory="{experiment}"),
        pdf=f"{paths.fill(paths.FIGURE, figure='predicted_vlb')}.pdf",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("figure_predicted_vlb"),
    shell:
        "expertmerge figure-predicted-vlb --vlb {input.vlb:q} --predicted {input.predicted:q} --out {output.png:q}"
        " > {log:q} 2>&1"


rule figure_loss_profile:
    input:
        profile=rules.loss_profile.output,
        switches=rules.auto_switch.output,
        merges=lambda w: rule_arguments.auto_merge_files(config, w.experiment),
    output:
        png=report(f"{paths.fill(paths.FIGURE, figure='loss_profile')}.png", caption="../report/loss_profile.rst",
                   category="Figures", subcategory="{experiment}"),
        pdf=f"{paths.fill(paths.FIGURE, figure='loss_profile')}.pdf",
    params:
        arguments=lambda w: rule_arguments.figure_loss_profile_arguments(config, w.experiment),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("figure_loss_profile"),
    shell:
        "expertmerge figure-loss-profile --profile {input.profile:q} --switches {input.switches:q} {params.arguments} "
        "--out {output.png:q} > {log:q} 2>&1"
