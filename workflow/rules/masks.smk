# Stage masks (paper Sections 3.2-3.5, Figures 2, 4 and 5): rank the output-LayerNorm entries by
# normalised Fisher for each scheme (individual: the task's own; global: all tasks; cv: all but
# the target) (src/lnpeft/analysis/masks.py); the Fisher-subset runs that train the top ceil(f * N) entries
# are fine-tuning runs (method dir fisher-{scheme}-f{fraction}, see finetune.smk).


rule rank_masks:
    input:
        lambda w: [f"results/fisher/{w.model}/{t}.parquet" for t in ([w.task] if w.scheme == "individual" else TASKS)],
    output:
        "results/masks/{model}/{scheme}/{task}.parquet",
    log:
        "results/logs/rank_masks/{model}/{scheme}/{task}.log",
    priority: 1  # it unblocks the Fisher-subset runs, the longest jobs: schedule it first
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        fisher=lambda w: [
            f"{t}=results/fisher/{w.model}/{t}.parquet" for t in ([w.task] if w.scheme == "individual" else TASKS)
        ],
    shell:
        "lnpeft masks --fisher {params.fisher} --scheme {wildcards.scheme} --task {wildcards.task}"
        " --out {output} > {log} 2>&1"


rule plot_fig4:
    input:
        expand("results/fisher/{model}/{task}.parquet", model=MODEL, task=TASKS),
    output:
        pdf=report(
            "results/figures/fig4_global_fisher.pdf",
            caption="../report/fig4.rst",
            category="Figures",
            labels={"figure": "Figure 4 (global Fisher)"},
        ),
        png="results/figures/fig4_global_fisher.png",
    log:
        "results/logs/plot_fig4/fig4.log",
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        fisher=expand("{task}=results/fisher/{model}/{task}.parquet", model=MODEL, task=TASKS),
        prefix=subpath(output.pdf, strip_suffix=".pdf"),
    shell:
        "lnpeft figure fig4 --fisher {params.fisher} --out {params.prefix} > {log} 2>&1"


rule plot_fig2:
    input:
        fractions=fraction_runs(["individual"]),
        # the all-LayerNorm runs, drawn as a reference line, when the grid has them
        layernorm=grid_runs(methods=["layernorm"]) if "layernorm" in METHODS else [],
    output:
        pdf=report(
            "results/figures/fig2_fractions.pdf",
            caption="../report/fig2.rst",
            category="Figures",
            labels={"figure": "Figure 2 (fractions)"},
        ),
        png="results/figures/fig2_fractions.png",
    log:
        "results/logs/plot_fig2/fig2.log",
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        prefix=subpath(output.pdf, strip_suffix=".pdf"),
    shell:
        "lnpeft figure fig2 --runs {input.fractions} {input.layernorm} --out {params.prefix} > {log} 2>&1"


rule plot_fig5:
    input:
        fractions=fraction_runs(),
        layernorm=grid_runs(methods=["layernorm"]) if "layernorm" in METHODS else [],
    output:
        pdf=report(
            "results/figures/fig5_schemes.pdf",
            caption="../report/fig5.rst",
            category="Figures",
            labels={"figure": "Figure 5 (mask schemes)"},
        ),
        png="results/figures/fig5_schemes.png",
    log:
        "results/logs/plot_fig5/fig5.log",
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        prefix=subpath(output.pdf, strip_suffix=".pdf"),
    shell:
        "lnpeft figure fig5 --runs {input.fractions} {input.layernorm} --out {params.prefix} > {log} 2>&1"
