# Stage data: one GLUE task (a glue_data/ TSV folder or the hub) or custom task (its own files)
# into results/data/{task}/*.parquet plus MANIFEST.json (src/lnpeft/data/prepare.py). Localrules: the hub
# download needs the login node. Output file sets differ by task (HF split names), so MNLI, AX and
# custom tasks without a test split reuse the rule with their own.

NO_TEST = [t for t in CUSTOM if not get_task(t).test_splits]


rule prepare_glue:
    input:
        get_glue_files,
    output:
        splits=multiext("results/data/{task}/", "train.parquet", "validation.parquet", "test.parquet"),
        manifest="results/data/{task}/MANIFEST.json",
    log:
        "results/logs/prepare_glue/{task}.log",
    wildcard_constraints:
        task=rf"(?!(?:{'|'.join(['mnli', 'ax', *NO_TEST])})/)[a-z0-9]+",
    localrule: True
    conda:
        "../../envs/lnpeft.yaml"
    params:
        source=prepare_data_source_flags,
        subsample=prepare_data_subsample_flags,
        held_out=prepare_data_held_out_flags,
        max_bad_rows=lookup(dpath="data/max_bad_rows", within=config, default=0),
        empty_text=lookup(dpath="data/empty_text", within=config, default="report"),
        seed=lookup(dpath="data/seed", within=config, default=0),
        out=subpath(output.manifest, parent=True),
    shell:
        "lnpeft prepare-data --task {wildcards.task} {params.source} --out {params.out}"
        " --max-bad-rows {params.max_bad_rows} --empty-text {params.empty_text}"
        " {params.subsample} {params.held_out} --seed {params.seed} > {log} 2>&1"


use rule prepare_glue as prepare_glue_mnli with:
    output:
        splits=multiext(
            "results/data/{task}/",
            "train.parquet",
            "validation_matched.parquet",
            "validation_mismatched.parquet",
            "test_matched.parquet",
            "test_mismatched.parquet",
        ),
        manifest="results/data/{task}/MANIFEST.json",
    log:
        "results/logs/prepare_glue_mnli/{task}.log",
    wildcard_constraints:
        task="mnli",


use rule prepare_glue as prepare_glue_ax with:
    output:
        splits="results/data/{task}/test.parquet",
        manifest="results/data/{task}/MANIFEST.json",
    log:
        "results/logs/prepare_glue_ax/{task}.log",
    wildcard_constraints:
        task="ax",


use rule prepare_glue as prepare_custom_no_test with:
    output:
        splits=multiext("results/data/{task}/", "train.parquet", "validation.parquet"),
        manifest="results/data/{task}/MANIFEST.json",
    log:
        "results/logs/prepare_custom_no_test/{task}.log",
    wildcard_constraints:
        task="|".join(NO_TEST) or "(?!)",  # (?!) matches nothing: no such task
