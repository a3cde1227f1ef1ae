# Stage 2: the experts. On the demo both are trained by the pipeline (EDM loss for the quality
# expert, VDM's ELBO for the likelihood expert) and stored as safetensors + JSON.


rule train_expert:
    input:
        splits=rules.dataset.output.splits,
    output:
        weights="results/{experiment}/experts/{expert}.safetensors",
        record="results/{experiment}/experts/{expert}.json",
    params:
        spec=lambda w: experiment(w)["experts"][w.expert],
        stem=lambda w: f"results/{w.experiment}/experts/{w.expert}",
        gamma_range=lambda w: gamma_range(experiment(w)["experts"][w.expert]["noise_range"]),
        fourier=lambda w: fourier_argument(experiment(w)["experts"][w.expert]["train"]),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/train_expert/{expert}.log",
    shell:
        "expertmerge train-expert --family {params.spec[family]} --data {input.splits}"
        " --gamma-min {params.gamma_range[0]} --gamma-max {params.gamma_range[1]}"
        " --steps {params.spec[train][steps]} --batch-size {params.spec[train][batch_size]}"
        " --lr {params.spec[train][lr]} --ema-decay {params.spec[train][ema_decay]}"
        " --eval-every {params.spec[train][eval_every]} --seed {params.spec[train][seed]}"
        " {params.fourier} --threads {threads} --out {params.stem} > {log} 2>&1"
