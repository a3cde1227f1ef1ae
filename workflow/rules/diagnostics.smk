# Diagnostics (optional, per experiment with a `loss_profile` section): each expert's denoising loss
# L(gamma), the integrand of the VLB's diffusion term (Eq. 7), on one gamma grid over both experts'
# ranges, and its figure with the configured switch levels marked.


rule loss_profile:
    input:
        experts=both_expert_files,
        splits=rules.dataset.output.splits,
    output:
        "results/{experiment}/diagnostics/loss_profile.csv",
    params:
        arguments=lambda w: rule_arguments.loss_profile_arguments(config, w.experiment, splits_file(w)),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/loss_profile.log",
    shell:
        "expertmerge loss-profile {params.arguments} --threads {threads} --out {output} > {log} 2>&1"


rule predict_vlb:
    input:
        profile=rules.loss_profile.output,
        splits=rules.dataset.output.splits,
    output:
        "results/{experiment}/diagnostics/predicted_vlb.csv",
    params:
        arguments=lambda w: rule_arguments.predict_vlb_arguments(config, w.experiment, splits_file(w)),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/predict_vlb.log",
    shell:
        "expertmerge predict-vlb --profile {input.profile} {params.arguments} --out {output} > {log} 2>&1"


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
        "expertmerge figure-predicted-vlb --vlb {input.vlb} --predicted {input.predicted} --out {output.png} > {log} 2>&1"


rule figure_loss_profile:
    input:
        rules.loss_profile.output,
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
        "expertmerge figure-loss-profile --profile {input} {params.arguments} --out {output.png} > {log} 2>&1"
