# Stage 6: tables (CSV, Markdown, LaTeX) and figures (PNG, PDF), each shown by
# `snakemake --report results/report.html` with its caption from workflow/report/.


# One rule per table that every experiment has (expertmerge.table_registry), named table<number>.
for table in experiment_tables():

    rule:
        name:
            f"table{table.number}"
        input:
            unpack(table_input_files(table)),
        output:
            csv=report(table_path(table, ".csv"), caption=table_caption(table), category="Tables",
                       subcategory="{experiment}"),
            md=table_path(table, ".md"),
            tex=table_path(table, ".tex"),
        conda:
            "../../envs/expertmerge.yaml"
        log:
            paths.log(f"table{table.number}"),
        params:
            # Snakemake evaluates a rule's shell command when the job runs, after this loop has moved on, so
            # the table's number reaches it through params, which are evaluated here.
            number=table.number,
            # The optional kinds' files from config and wildcards, not from `input` (see rule summary).
            arguments=table_arguments(table),
        shell:
            "expertmerge table --table {params.number} --inputs {input.inputs:q} {params.arguments}"
            " --out {output.csv:q} > {log:q} 2>&1"


rule figure_tradeoff:
    input:
        nll=nll_files,
        vlb=vlb_files,
        fid=per_eta(paths.FID, sampler=SAMPLERS),
    output:
        png=report(figure_file("tradeoff", ".png"), caption="../report/tradeoff.rst", category="Figures",
                   subcategory="{experiment}"),
        pdf=figure_file("tradeoff", ".pdf"),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("figure_tradeoff"),
    params:
        arguments=lambda w: rule_arguments.figure_tradeoff_arguments(config, w.experiment),
    shell:
        "expertmerge figure-tradeoff --nll {input.nll:q} --vlb {input.vlb:q} --fid {input.fid:q} {params.arguments}"
        " --out {output.png:q} > {log:q} 2>&1"


rule summary:
    input:
        nll=nll_files,
        vlb=vlb_files,
        fid=fid_files,
        profile=loss_profile_files,
        predicted=predicted_vlb_files,
    output:
        md=report(f"{paths.SUMMARY}.md", caption="../report/summary.rst", category="Tables",
                  subcategory="{experiment}"),
        csv=f"{paths.SUMMARY}.csv",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("summary"),
    params:
        # From config and wildcards only: Snakemake leaves a params function that reads `input` out of its
        # params rerun trigger (a changed recommend.fid_budget would leave a stale summary).
        arguments=lambda w: rule_arguments.summary_arguments(config, w.experiment, loss_profile_files(w),
                                                             predicted_vlb_files(w)),
    shell:
        "expertmerge summary --nll {input.nll:q} --vlb {input.vlb:q} --fid {input.fid:q} {params.arguments}"
        " --out {output.md:q} > {log:q} 2>&1"


rule figure_fixed_noise:
    input:
        per_eta(paths.fill(paths.SAMPLE_SHARD, sampler="ode", shard=0)),
    output:
        png=report(figure_file("fixed_noise", ".png"), caption="../report/fixed_noise.rst",
                   category="Figures", subcategory="{experiment}"),
        pdf=figure_file("fixed_noise", ".pdf"),
    params:
        arguments=lambda w: rule_arguments.figure_fixed_noise_arguments(config, w.experiment),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("figure_fixed_noise"),
    shell:
        "expertmerge figure-grid {params.arguments} --shards {input:q}"
        " --out {output.png:q} > {log:q} 2>&1"


rule figure_samples:
    input:
        sample_panels,
    output:
        png=report(figure_file("samples_{sampler}", ".png"), caption="../report/samples.rst",
                   category="Figures", subcategory="{experiment}"),
        pdf=figure_file("samples_{sampler}", ".pdf"),
    params:
        arguments=lambda w: rule_arguments.figure_samples_arguments(config, w.experiment, w.sampler),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("figure_samples/{sampler}"),
    shell:
        "expertmerge figure-grid {params.arguments} --shards {input:q} --out {output.png:q} > {log:q} 2>&1"


rule figure_fid_vs_nfe:
    input:
        fid_files,
    output:
        png=report(figure_file("fid_vs_nfe", ".png"), caption="../report/fid_vs_nfe.rst",
                   category="Figures", subcategory="{experiment}"),
        pdf=figure_file("fid_vs_nfe", ".pdf"),
    params:
        arguments=lambda w: rule_arguments.figure_fid_vs_nfe_arguments(config, w.experiment),
    conda:
        "../../envs/expertmerge.yaml"
    log:
        paths.log("figure_fid_vs_nfe"),
    shell:
        "expertmerge figure-fid-vs-nfe --fid {input:q} {params.arguments} --out {output.png:q} > {log:q} 2>&1"
