# Stage 6: tables (CSV, Markdown, LaTeX) and figures (PNG, PDF), each shown by
# `snakemake --report results/report.html` with its caption from workflow/report/.


rule table1:
    input:
        nll_files,
    output:
        csv=report("results/{experiment}/tables/table1.csv", caption="../report/table1.rst", category="Tables"),
        md="results/{experiment}/tables/table1.md",
        tex="results/{experiment}/tables/table1.tex",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/table1.log",
    shell:
        "expertmerge table --table 1 --inputs {input} --out {output.csv} > {log} 2>&1"


rule table2:
    input:
        per_eta("results/{experiment}/fid/{sampler}/{eta}.json", sampler=SAMPLERS),
    output:
        csv=report("results/{experiment}/tables/table2.csv", caption="../report/table2.rst", category="Tables"),
        md="results/{experiment}/tables/table2.md",
        tex="results/{experiment}/tables/table2.tex",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/table2.log",
    shell:
        "expertmerge table --table 2 --inputs {input} --out {output.csv} > {log} 2>&1"


rule table4:
    input:
        vlb_files,
    output:
        csv=report("results/{experiment}/tables/table4.csv", caption="../report/table4.rst", category="Tables"),
        md="results/{experiment}/tables/table4.md",
        tex="results/{experiment}/tables/table4.tex",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/table4.log",
    shell:
        "expertmerge table --table 4 --inputs {input} --out {output.csv} > {log} 2>&1"


rule figure_tradeoff:
    input:
        nll=nll_files,
        vlb=vlb_files,
        fid=per_eta("results/{experiment}/fid/{sampler}/{eta}.json", sampler=SAMPLERS),
    output:
        png=report("results/{experiment}/figures/fig2.png", caption="../report/fig2.rst", category="Figures"),
        pdf="results/{experiment}/figures/fig2.pdf",
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/fig2.log",
    shell:
        "expertmerge figure-tradeoff --nll {input.nll} --vlb {input.vlb} --fid {input.fid}"
        " --out {output.png} > {log} 2>&1"


rule figure_fixed_noise:
    input:
        per_eta("results/{experiment}/samples/ode/{eta}/shard0.npz"),
    output:
        png=report("results/{experiment}/figures/fig3.png", caption="../report/fig3.rst", category="Figures"),
        pdf="results/{experiment}/figures/fig3.pdf",
    params:
        rows=lambda w: experiment(w)["figures"]["fixed_noise_rows"],
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/fig3.log",
    shell:
        "expertmerge figure-grid --kind fixed-noise --count {params.rows} --shards {input}"
        " --out {output.png} > {log} 2>&1"


rule figure_samples:
    input:
        sample_panels,
    output:
        png=report("results/{experiment}/figures/fig{number}.png", caption="../report/fig_samples.rst", category="Figures"),
        pdf="results/{experiment}/figures/fig{number}.pdf",
    wildcard_constraints:
        number="6|7",
    params:
        samples=lambda w: experiment(w)["figures"]["grid_samples"],
        sampler=lambda w: SAMPLE_FIGURES[w.number],
    conda:
        "../../envs/expertmerge.yaml"
    log:
        "results/{experiment}/logs/fig{number}.log",
    shell:
        "expertmerge figure-grid --kind samples --title '{params.sampler} sampler' --count {params.samples}"
        " --shards {input} --out {output.png} > {log} 2>&1"
