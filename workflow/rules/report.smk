# Stage 6: tables (CSV, Markdown, LaTeX) and figures (PNG, PDF), each shown by
# `snakemake --report results/report.html` with its caption from workflow/report/.


def per_eta(pattern, **extra):
    """Files of `pattern` for every configured eta, in config order (and for `extra` wildcards)."""

    def files(wildcards):
        return expand(pattern, experiment=wildcards.experiment, eta=eta_labels(experiment(wildcards)), **extra)

    return files


def nll_files(wildcards):
    return expand(
        RESULTS + "/nll/{eta}/shard{shard}.csv",
        experiment=wildcards.experiment,
        eta=eta_labels(experiment(wildcards)),
        shard=nll_shards(wildcards.experiment),
    )


def vlb_files(wildcards):
    return expand(
        RESULTS + "/vlb/{eta}/run{run}.json",
        experiment=wildcards.experiment,
        eta=eta_labels(experiment(wildcards)),
        run=range(1, experiment(wildcards)["vlb"]["runs"] + 1),
    )


rule table1:
    input:
        nll_files,
    output:
        csv=report(RESULTS + "/tables/table1.csv", caption="../report/table1.rst", category="Tables"),
        md=RESULTS + "/tables/table1.md",
        tex=RESULTS + "/tables/table1.tex",
    log:
        RESULTS + "/logs/table1.log",
    shell:
        "expertmerge table --table 1 --inputs {input} --out {output.csv} > {log} 2>&1"


rule table2:
    input:
        per_eta(RESULTS + "/fid/{sampler}/{eta}.json", sampler=SAMPLERS),
    output:
        csv=report(RESULTS + "/tables/table2.csv", caption="../report/table2.rst", category="Tables"),
        md=RESULTS + "/tables/table2.md",
        tex=RESULTS + "/tables/table2.tex",
    log:
        RESULTS + "/logs/table2.log",
    shell:
        "expertmerge table --table 2 --inputs {input} --out {output.csv} > {log} 2>&1"


rule table4:
    input:
        vlb_files,
    output:
        csv=report(RESULTS + "/tables/table4.csv", caption="../report/table4.rst", category="Tables"),
        md=RESULTS + "/tables/table4.md",
        tex=RESULTS + "/tables/table4.tex",
    log:
        RESULTS + "/logs/table4.log",
    shell:
        "expertmerge table --table 4 --inputs {input} --out {output.csv} > {log} 2>&1"


rule figure_tradeoff:
    input:
        nll=nll_files,
        vlb=vlb_files,
        fid=per_eta(RESULTS + "/fid/{sampler}/{eta}.json", sampler=SAMPLERS),
    output:
        png=report(RESULTS + "/figures/fig2.png", caption="../report/fig2.rst", category="Figures"),
        pdf=RESULTS + "/figures/fig2.pdf",
    log:
        RESULTS + "/logs/fig2.log",
    shell:
        "expertmerge figure-tradeoff --nll {input.nll} --vlb {input.vlb} --fid {input.fid}"
        " --out {output.png} > {log} 2>&1"


rule figure_fixed_noise:
    input:
        per_eta(RESULTS + "/samples/ode/{eta}/shard0.npz"),
    output:
        png=report(RESULTS + "/figures/fig3.png", caption="../report/fig3.rst", category="Figures"),
        pdf=RESULTS + "/figures/fig3.pdf",
    params:
        rows=lambda w: experiment(w)["figures"]["fixed_noise_rows"],
    log:
        RESULTS + "/logs/fig3.log",
    shell:
        "expertmerge figure-grid --kind fixed-noise --count {params.rows} --shards {input}"
        " --out {output.png} > {log} 2>&1"


rule figure_samples:
    input:
        lambda w: per_eta(RESULTS + "/samples/" + SAMPLE_FIGURES[w.number] + "/{eta}/shard0.npz")(w),
    output:
        png=report(RESULTS + "/figures/fig{number}.png", caption="../report/fig_samples.rst", category="Figures"),
        pdf=RESULTS + "/figures/fig{number}.pdf",
    wildcard_constraints:
        number="6|7",
    params:
        count=lambda w: experiment(w)["figures"]["grid_samples"],
        sampler=lambda w: SAMPLE_FIGURES[w.number],
    log:
        RESULTS + "/logs/fig{number}.log",
    shell:
        "expertmerge figure-grid --kind samples --title '{params.sampler} sampler' --count {params.count}"
        " --shards {input} --out {output.png} > {log} 2>&1"


SAMPLE_FIGURES = {"6": "ode", "7": "ancestral"}
