# Stage report: Table 3, the Kruskal-Wallis statistics and the GLUE submission zips
# (src/lnpeft/report/{table3,stats,submission,validate}.py). CPU-only, small: local-friendly.


rule make_table3:
    input:
        scores="results/tables/scores.parquet",
        runs=table3_run_files(GLUE_TASKS),
        data=test_data(GLUE_TASKS),
        glue_results=lambda wildcards: glue_results_file() or [],
    output:
        csv=report(
            "results/tables/table3.csv",
            caption="../report/table3.rst",
            category="Tables",
            labels={"table": "Table 3 (test)"},
        ),
        md="results/tables/table3.md",
        tex="results/tables/table3.tex",
        scores="results/tables/scores_test.parquet",
    log:
        "results/logs/make_table3/table3.log",
    benchmark:
        "results/benchmarks/make_table3/table3.tsv"
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        prefix=lambda wildcards, output: output.csv.removesuffix(".csv"),
        glue=lambda wildcards, input: f"--glue-results {input.glue_results}" if input.glue_results else "",
        runs=table3_run_args(GLUE_TASKS),
    shell:
        "lnpeft table3 --scores {input.scores} {params.glue} --data-dir results/data"
        " --runs {params.runs} --out-prefix {params.prefix} --scores-out {output.scores} > {log} 2>&1"


rule compute_stats:
    input:
        # scores with the test rows Table 3 found (GLUE results or labelled test data), if any;
        # custom tasks alone have no Table 3: their dev scores
        scores="results/tables/scores_test.parquet" if GLUE_TASKS else "results/tables/scores.parquet",
        # the seeds behind the dev rows, for the bootstrap intervals
        seeds="results/tables/scores_seeds.parquet",
    output:
        report(
            "results/stats/kruskal.json",
            caption="../report/stats.rst",
            category="Statistical tests",
            labels={"test": "Kruskal-Wallis"},
        ),
    log:
        "results/logs/compute_stats/kruskal.log",
    benchmark:
        "results/benchmarks/compute_stats/kruskal.tsv"
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        a=lookup(dpath="stats/a", within=config, default="bitfit"),
        b=lookup(dpath="stats/b", within=config, default="layernorm"),
        bootstrap=lookup(dpath="stats/bootstrap", within=config, default=1000),
    shell:
        "lnpeft stats kruskal --scores {input.scores} --seed-scores {input.seeds} --a {params.a} --b {params.b}"
        " --bootstrap {params.bootstrap} --out {output} > {log} 2>&1"


rule make_submission:
    input:
        runs=get_method_run_files,
        data=submission_data(),
    output:
        zip=report(
            "results/submission/{model}/{method}.zip",
            caption="../report/submission.rst",
            category="Submission",
            labels={"method": "{method}", "file": "zip"},
        ),
        manifest=report(
            "results/submission/{model}/{method}.manifest.json",
            caption="../report/submission.rst",
            category="Submission",
            labels={"method": "{method}", "file": "manifest"},
        ),
    log:
        "results/logs/make_submission/{model}/{method}.log",
    benchmark:
        "results/benchmarks/make_submission/{model}/{method}.tsv"
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=submission_run_args,
        allow=(
            "--allow-incomplete" if lookup(dpath="submission/allow_incomplete", within=config, default=False) else ""
        ),
    shell:
        "lnpeft submission --method {wildcards.method} --runs {params.runs} --data-dir results/data"
        " --out {output.zip} {params.allow} > {log} 2>&1"
