# Stage 2: the experts, stored as safetensors + JSON at paths.EXPERT, whose {source} is how config.yaml
# makes them: train (the demo's small U-Nets, EDM loss for the quality expert and VDM's ELBO for the
# likelihood expert), recipe (the paper-scale trainer), fetch (a download converted once) or path (a
# given file converted once).

from expertmerge import paths


rule experts:
    input:
        all_expert_files(),


rule train_expert:
    input:
        splits=rules.dataset.output.splits,
    output:
        weights=f"{paths.fill(paths.EXPERT, source='train')}.safetensors",
        record=f"{paths.fill(paths.EXPERT, source='train')}.json",
    params:
        arguments=lambda w: rule_arguments.train_expert_arguments(config, w.experiment, w.expert, splits_file(w)),
        stem=lambda w: paths.EXPERT.format(experiment=w.experiment, source="train", expert=w.expert),
    threads: 1
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("train_expert/{expert}"),
    shell:
        "expertmerge train-expert {params.arguments} --threads {threads} --out {params.stem:q} > {log:q} 2>&1"


rule train_recipe:
    input:
        splits=rules.dataset.output.splits,
        previous=previous_training_states,  # a chain's last job resumes from the previous job's state
    output:
        weights=f"{paths.fill(paths.EXPERT, source='recipe')}.safetensors",
        record=f"{paths.fill(paths.EXPERT, source='recipe')}.json",
    params:
        arguments=lambda w: rule_arguments.train_recipe_arguments(config, w.experiment, w.expert, splits_file(w)),
        out=lambda w: paths.EXPERT.format(experiment=w.experiment, source="recipe", expert=w.expert),
        # the training folder is kept across failures: a rerun resumes from it
        workdir=lambda w: paths.TRAINING.format(experiment=w.experiment, expert=w.expert),
    threads: 8
    resources:
        gpu=lambda w: expert_spec(w)["recipe"]["gpus"],
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("train_recipe/{expert}"),
    shell:
        "expertmerge train-recipe {params.arguments} --workdir {params.workdir}"
        " --gpus {resources.gpu} --out {params.out:q} >> {log:q} 2>&1"


# A training longer than one job's time limit is a chain (recipe.steps_per_job): each job trains its
# steps and hands the training state to the next, which the chain's last job (train_recipe) ends.
use rule train_recipe as train_recipe_chunk with:
    output:
        state=temp(paths.TRAINING_STATE),
    params:
        arguments=lambda w: rule_arguments.train_recipe_arguments(
            config, w.experiment, w.expert, splits_file(w), until_step=w.step
        ),
        out=lambda w: training_state_path(w.experiment, w.expert, w.step),
        workdir=lambda w: paths.TRAINING.format(experiment=w.experiment, expert=w.expert),
    wildcard_constraints:
        step=r"\d+",
    log:
        paths.log("train_recipe/{expert}-{step}"),


rule import_expert:
    input:
        imported_file,
    output:
        weights=f"{paths.EXPERT}.safetensors",
        record=f"{paths.EXPERT}.json",
    params:
        arguments=lambda w: rule_arguments.import_expert_arguments(config, w.experiment, w.expert),
        stem=lambda w: paths.EXPERT.format(experiment=w.experiment, source=w.source, expert=w.expert),
    wildcard_constraints:
        source="fetch|path",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("import_expert/{source}/{expert}"),
    shell:
        "expertmerge import-expert {params.arguments} --out {params.stem:q} > {log:q} 2>&1"
