# Stage fisher (paper Sections 2 and 3.3, Table 1, Figure 3): the empirical Fisher (Eq. 2) at each
# task's init checkpoint from batched per-sample gradients (src/lnpeft/analysis/fisher.py), then Table 1
# (components ranked by normalised Fisher) and the per-layer LayerNorm Fisher heat maps.
# One Fisher per task, through the first seed's init (its seeded head): the masks built from it rank
# the LayerNorm entries for every seed's Fisher-subset runs, as the paper computes the Fisher once
# per task before fine-tuning. The pretrained encoder is the same for every seed; only the head's
# random init differs, and with it the Fisher's gradients (tests/test_config.py pins this choice).


rule compute_fisher:
    input:
        init=lambda w: f"{init_dir(w.task, SEEDS[0])}/config.json",
        weights=lambda w: f"{init_dir(w.task, SEEDS[0])}/model.safetensors",
        train=lambda w: data_path(w.task, "train"),
    output:
        entries="results/fisher/{model}/{task}.parquet",
        components="results/fisher/{model}/{task}.components.parquet",
    log:
        "results/logs/compute_fisher/{model}/{task}.log",
    benchmark:
        "results/benchmarks/compute_fisher/{model}/{task}.tsv"
    priority: 1  # it unblocks the Fisher-subset runs, the longest jobs: schedule it first
    conda:
        "../../envs/lnpeft.yaml"
    threads: 4
    resources:
        mem_mb=gpu_mem_mb,
        runtime=fisher_runtime,
        gpu=1,
        gpu_memory_mb=gpu_memory_mb_run,
    params:
        init=subpath(input.init, parent=True),
        max_samples=task_param("fisher", "max_samples"),
        batch_size=lookup(dpath="fisher/batch_size", within=config),
        max_length=task_param("training", "max_length"),
    shell:
        f"{OFFLINE} lnpeft fisher --model {{params.init}} --data {{input.train}} --out {{output.entries}}"
        " --components-out {output.components} --max-samples {params.max_samples}"
        " --batch-size {params.batch_size} --max-length {params.max_length} --threads {threads}"
        f"{DTYPE_FLAG} > {{log}} 2>&1"


rule rank_components:
    input:
        expand("results/fisher/{model}/{task}.components.parquet", model=MODEL, task=TASKS),
    output:
        csv=report(
            "results/tables/table1.csv",
            caption="../report/table1.rst",
            category="Tables",
            labels={"table": "Table 1 (Fisher ranking)"},
        ),
        md="results/tables/table1.md",
        tex="results/tables/table1.tex",
    log:
        "results/logs/rank_components/table1.log",
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        components=expand("{task}=results/fisher/{model}/{task}.components.parquet", model=MODEL, task=TASKS),
        prefix=subpath(output.csv, strip_suffix=".csv"),
    shell:
        "lnpeft table1 --components {params.components} --out {params.prefix} > {log} 2>&1"


rule plot_fig3:
    input:
        expand("results/fisher/{model}/{task}.parquet", model=MODEL, task=TASKS),
    output:
        pdf=report(
            "results/figures/fig3_layernorm_fisher.pdf",
            caption="../report/fig3.rst",
            category="Figures",
            labels={"figure": "Figure 3 (LayerNorm Fisher)"},
        ),
        png="results/figures/fig3_layernorm_fisher.png",
    log:
        "results/logs/plot_fig3/fig3.log",
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
        "lnpeft figure fig3 --fisher {params.fisher} --out {params.prefix} > {log} 2>&1"
