# Diagnostics and the choice of eta from data (per experiment with a `loss_profile` section): each
# expert's denoising loss L(gamma), the integrand of the VLB's diffusion term (Eq. 7), on one gamma grid
# over both experts' ranges, measured on the selection split in shards; the VLB it predicts for every
# eta; the VLB-optimal merge (eta "auto"); and their figures.


rule loss_profile_shard:
    input:
        experts=both_expert_files,
        splits=rules.dataset.output.splits,
    output:
        "results/{experiment}/diagnostics/loss_profile/shard{shard}.csv",
    params:
        arguments=lambda w: rule_arguments.loss_profile_shard_arguments(config, w.experiment, w.shard, splits_file(w)),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/loss_profile/shard{shard}.log",
    shell:
        "expertmerge loss-profile {params.arguments} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule loss_profile:
    input:
        lambda w: expand(rules.loss_profile_shard.output, experiment=w.experiment, shard=loss_profile_shards(w.experiment)),
    output:
        "results/{experiment}/diagnostics/loss_profile.csv",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/loss_profile.log",
    shell:
        "expertmerge combine-profiles --inputs {input:q} --out {output:q} > {log:q} 2>&1"


rule auto_switch:
    input:
        rules.loss_profile.output,
    output:
        "results/{experiment}/diagnostics/auto_switch.json",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/auto_switch.log",
    shell:
        "expertmerge auto-switch --profile {input:q} --out {output:q} > {log:q} 2>&1"


rule predict_vlb:
    input:
        profile=rules.loss_profile.output,
        splits=rules.dataset.output.splits,
        switches=auto_switch_files,
    output:
        "results/{experiment}/diagnostics/predicted_vlb.csv",
    params:
        arguments=lambda w: rule_arguments.predict_vlb_arguments(config, w.experiment, splits_file(w)),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/predict_vlb.log",
    shell:
        "expertmerge predict-vlb --profile {input.profile:q} {params.arguments} --out {output:q} > {log:q} 2>&1"


rule figure_predicted_vlb:
    input:
        vlb=vlb_files,
        predicted=rules.predict_vlb.output,
    output:
        png=report("results/{experiment}/figures/predicted_vlb.png", caption="../report/predicted_vlb.rst",
                   category="Figures", subcategory="{experiment}"),
        pdf="results/{experiment}/figures/predicted_vlb.pdf",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/figure_predicted_vlb.log",
    shell:
        "expertmerge figure-predicted-vlb --vlb {input.vlb:q} --predicted {input.predicted:q} --out {output.png:q}"
        " > {log:q} 2>&1"


rule figure_loss_profile:
    input:
        profile=rules.loss_profile.output,
        switches=rules.auto_switch.output,
    output:
        png=report("results/{experiment}/figures/loss_profile.png", caption="../report/loss_profile.rst",
                   category="Figures", subcategory="{experiment}"),
        pdf="results/{experiment}/figures/loss_profile.pdf",
    params:
        arguments=lambda w: rule_arguments.figure_loss_profile_arguments(config, w.experiment),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/figure_loss_profile.log",
    shell:
        "expertmerge figure-loss-profile --profile {input.profile:q} --switches {input.switches:q} {params.arguments} "
        "--out {output.png:q} > {log:q} 2>&1"
