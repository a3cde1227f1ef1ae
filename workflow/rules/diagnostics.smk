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
        experts=experts_argument,
        profile=lambda w: experiment(w)["loss_profile"],
        seed=lambda w: experiment(w)["loss_profile"].get("seed", 0),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/loss_profile.log",
    shell:
        "expertmerge loss-profile {params.experts} --data {input.splits} --split {params.profile[split]}"
        " --points {params.profile[points]} --seed {params.seed} --batch-size {params.profile[batch_size]}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule figure_loss_profile:
    input:
        rules.loss_profile.output,
    output:
        png=report("results/{experiment}/figures/loss_profile.png", caption="../report/loss_profile.rst",
                   category="Figures", subcategory="{experiment}"),
        pdf="results/{experiment}/figures/loss_profile.pdf",
    params:
        etas=lambda w: " ".join(map(str, numeric_etas(experiment(w)))),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/figure_loss_profile.log",
    shell:
        "expertmerge figure-loss-profile --profile {input} --etas {params.etas} --out {output.png} > {log} 2>&1"
