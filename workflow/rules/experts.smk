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
        arguments=lambda w: rule_arguments.train_expert_arguments(config, w.experiment, w.expert, splits_file(w)),
        stem=lambda w: f"results/{w.experiment}/experts/train/{w.expert}",
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/train_expert/{expert}.log",
    shell:
        "expertmerge train-expert {params.arguments} --threads {threads} --out {params.stem:q} > {log:q} 2>&1"


rule train_recipe:
    input:
        splits=rules.dataset.output.splits,
        previous=previous_training_states,  # a chain's last job resumes from the previous job's state
    output:
        weights="results/{experiment}/experts/recipe/{expert}.safetensors",
        record="results/{experiment}/experts/recipe/{expert}.json",
    params:
        arguments=lambda w: rule_arguments.train_recipe_arguments(config, w.experiment, w.expert, splits_file(w)),
        out=lambda w: f"results/{w.experiment}/experts/recipe/{w.expert}",
        workdir=lambda w: f"results/{w.experiment}/training/{w.expert}",  # kept across failures: resumes
    threads: 8
    resources:
        gpu=lambda w: expert_spec(w)["recipe"]["gpus"],
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/train_recipe/{expert}.log",
    shell:
        "expertmerge train-recipe {params.arguments} --workdir {params.workdir}"
        " --gpus {resources.gpu} --out {params.out:q} >> {log:q} 2>&1"


# A training longer than one job's time limit is a chain (recipe.steps_per_job): each job trains its
# steps and hands the training state to the next, which the chain's last job (train_recipe) ends.
use rule train_recipe as train_recipe_chunk with:
    output:
        state=temp("results/{experiment}/training/{expert}/state-{step}.pt"),
    params:
        arguments=lambda w: rule_arguments.train_recipe_arguments(
            config, w.experiment, w.expert, splits_file(w), until_step=w.step
        ),
        out=lambda w: training_state_path(w.experiment, w.expert, w.step),
        workdir=lambda w: f"results/{w.experiment}/training/{w.expert}",
    wildcard_constraints:
        step=r"\d+",
    log:
        "results/{experiment}/logs/train_recipe/{expert}-{step}.log",


rule import_expert:
    input:
        imported_file,
    output:
        weights="results/{experiment}/experts/{source}/{expert}.safetensors",
        record="results/{experiment}/experts/{source}/{expert}.json",
    params:
        arguments=lambda w: rule_arguments.import_expert_arguments(config, w.experiment, w.expert),
        stem=lambda w: f"results/{w.experiment}/experts/{w.source}/{w.expert}",
    wildcard_constraints:
        source="fetch|path",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/import_expert/{source}/{expert}.log",
    shell:
        "expertmerge import-expert {params.arguments} --out {params.stem:q} > {log:q} 2>&1"
