# Stage 2: the experts, stored as safetensors + JSON under results/{experiment}/experts/{source}/,
# where source is how config.yaml makes them: train (the demo's small U-Nets, EDM loss for the
# quality expert and VDM's ELBO for the likelihood expert), recipe (the paper-scale trainer), fetch
# (a download converted once) or path (a given file converted once).


rule experts:
    input:
        all_expert_files(),


rule train_expert:
    input:
        splits=rules.dataset.output.splits,
    output:
        weights="results/{experiment}/experts/train/{expert}.safetensors",
        record="results/{experiment}/experts/train/{expert}.json",
    params:
        spec=lambda w: experiment(w)["experts"][w.expert],
        stem=lambda w: f"results/{w.experiment}/experts/train/{w.expert}",
        gamma_range=lambda w: gamma_range(experiment(w)["experts"][w.expert]["noise_range"]),
        network=lambda w: network_argument(experiment(w)["experts"][w.expert]["train"]),
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
        " {params.network} --threads {threads} --out {params.stem} > {log} 2>&1"


rule train_recipe:
    input:
        splits=rules.dataset.output.splits,
    output:
        weights="results/{experiment}/experts/recipe/{expert}.safetensors",
        record="results/{experiment}/experts/recipe/{expert}.json",
    params:
        arguments=recipe_arguments,
        stem=lambda w: f"results/{w.experiment}/experts/recipe/{w.expert}",
        workdir=lambda w: f"results/{w.experiment}/training/{w.expert}",  # kept across failures: resumes
    threads: 8
    resources:
        gpu=lambda w: expert_spec(w)["recipe"]["gpus"],
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/train_recipe/{expert}.log",
    shell:
        "expertmerge train-recipe {params.arguments} --data {input.splits} --workdir {params.workdir}"
        " --gpus {resources.gpu} --out {params.stem} >> {log} 2>&1"


rule import_expert:
    input:
        imported_file,
    output:
        weights="results/{experiment}/experts/{source}/{expert}.safetensors",
        record="results/{experiment}/experts/{source}/{expert}.json",
    params:
        arguments=import_arguments,
        stem=lambda w: f"results/{w.experiment}/experts/{w.source}/{w.expert}",
    wildcard_constraints:
        source="fetch|path",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/import_expert/{source}/{expert}.log",
    shell:
        "expertmerge import-expert {params.arguments} --out {params.stem} > {log} 2>&1"
