# Stage finetune (paper Section 3, Tables 2-3, Figures 2 and 5): one fine-tuning run per
# (task, method, lr, seed) from the task's init checkpoint (src/lnpeft/train/finetune.py), the
# Fisher-subset runs fisher-{scheme}-f{fraction}, and the aggregation of the grid into
# results/tables/scores.parquet and Table 2 (src/lnpeft/report/tables.py), and the learning
# curves of the Table 2 runs (src/lnpeft/report/curves.py). A killed run resumes from its last
# completed epoch (resume.pt in the run folder).
#
# With training.pack_size > 1 the parameter-efficient runs train in packs (src/lnpeft/plan/pack_plan.py):
# train_pack trains a pack's runs in one job, each in its own folder under results/packs/, and
# collect_run (one local job per run) puts each at its results/runs/ path, or fails with the
# message of a run whose loss turned non-finite. Full fine-tuning stays one job per run.


rule finetune:
    input:
        init=lambda w: f"{init_dir(w.task, w.seed)}/config.json",
        weights=lambda w: f"{init_dir(w.task, w.seed)}/model.safetensors",
        data=get_finetune_data,
    output:
        **run_outputs("results/runs/{model}/{task}/{method}/lr{lr}_seed{seed}"),
    log:
        "results/logs/finetune/{model}/{task}/{method}/lr{lr}_seed{seed}.log",
    benchmark:
        "results/benchmarks/finetune/{model}/{task}/{method}/lr{lr}_seed{seed}.tsv"
    wildcard_constraints:
        method="full" if PACK_SIZE > 1 else "full|bitfit|layernorm|random",
    conda:
        "../../envs/lnpeft.yaml"
    threads: 4
    resources:
        mem_mb=gpu_mem_mb,
        runtime=train_runtime,
        gpu=1,
        gpu_memory_mb=gpu_memory_mb_run,
        attempt=job_attempt,
    params:
        **training_params(),
        init=subpath(input.init, parent=True),
        out=subpath(output.epochs, parent=True),
        splits=finetune_split_args,
    shell:
        f"{OFFLINE} lnpeft finetune --init {{params.init}} {{params.splits}}"
        " --task {wildcards.task} --method {wildcards.method} --lr {wildcards.lr} --seed {wildcards.seed}"
        f" {TRAINING_FLAGS}{ATTEMPT_FLAG} --out {{params.out}} > {{log}} 2>&1"


if PACK_SIZE == 1:

    rule finetune_fisher_subset:
        input:
            init=lambda w: f"{init_dir(w.task, w.seed)}/config.json",
            weights=lambda w: f"{init_dir(w.task, w.seed)}/model.safetensors",
            data=get_finetune_data,
            mask="results/masks/{model}/{scheme}/{task}.parquet",
        output:
            **run_outputs("results/runs/{model}/{task}/fisher-{scheme}-f{fraction}/lr{lr}_seed{seed}"),
        log:
            "results/logs/finetune_fisher_subset/{model}/{task}/fisher-{scheme}-f{fraction}/lr{lr}_seed{seed}.log",
        benchmark:
            "results/benchmarks/finetune_fisher_subset/{model}/{task}/fisher-{scheme}-f{fraction}/lr{lr}_seed{seed}.tsv"
        conda:
            "../../envs/lnpeft.yaml"
        threads: 4
        resources:
            mem_mb=gpu_mem_mb,
            runtime=train_runtime,
            gpu=1,
            gpu_memory_mb=gpu_memory_mb_run,
            attempt=job_attempt,
        params:
            **training_params(),
            init=subpath(input.init, parent=True),
            out=subpath(output.epochs, parent=True),
            splits=finetune_split_args,
        shell:
            f"{OFFLINE} lnpeft finetune --init {{params.init}} {{params.splits}}"
            " --task {wildcards.task} --method fisher --mask {input.mask} --fraction {wildcards.fraction}"
            " --lr {wildcards.lr} --seed {wildcards.seed}"
            f" {TRAINING_FLAGS}{ATTEMPT_FLAG} --out {{params.out}} > {{log}} 2>&1"

else:

    rule train_pack:
        input:
            init=lambda w: f"{init_dir(w.task, w.seed)}/config.json",
            weights=lambda w: f"{init_dir(w.task, w.seed)}/model.safetensors",
            data=get_finetune_data,
            masks=get_pack_masks,
        output:
            status="results/packs/{model}/{task}/lr{lr}_seed{seed}/{pack}.json",
        log:
            "results/logs/train_pack/{model}/{task}/lr{lr}_seed{seed}/{pack}.log",
        benchmark:
            "results/benchmarks/train_pack/{model}/{task}/lr{lr}_seed{seed}/{pack}.tsv"
        conda:
            "../../envs/lnpeft.yaml"
        threads: 4
        resources:
            mem_mb=gpu_mem_mb,
            runtime=pack_runtime,
            gpu=1,
            gpu_memory_mb=gpu_memory_mb_pack,
        params:
            **training_params(),
            init=subpath(input.init, parent=True),
            splits=finetune_split_args,
            members=pack_member_args,
        shell:
            f"{OFFLINE} lnpeft finetune-pack --init {{params.init}} {{params.splits}}"
            " --task {wildcards.task} --seed {wildcards.seed} {params.members}"
            f" {TRAINING_FLAGS} --status {{output.status}} --allow-failed-runs > {{log}} 2>&1"

    rule collect_run:
        input:
            status=get_member_status,
        output:
            **run_outputs("results/runs/{model}/{task}/{member}/lr{lr}_seed{seed}"),
        log:
            "results/logs/collect_run/{model}/{task}/{member}/lr{lr}_seed{seed}.log",
        conda:
            "../../envs/lnpeft.yaml"
        threads: 1
        resources:
            mem_mb=500,
            runtime=5,
        params:
            staged=lambda w: f"{pack_dir(w.task, w.lr, w.seed)}/{w.member}",
            out=subpath(output.epochs, parent=True),
        shell:
            "lnpeft collect-run --staged {params.staged} --out {params.out} > {log} 2>&1"

    localrules:
        collect_run,


rule aggregate_scores:
    input:
        grid_runs(),
    output:
        scores="results/tables/scores.parquet",
        seeds="results/tables/scores_seeds.parquet",
        csv=report(
            "results/tables/table2.csv",
            caption="../report/table2.rst",
            category="Tables",
            labels={"table": "Table 2 (dev)"},
        ),
        md="results/tables/table2.md",
        tex="results/tables/table2.tex",
    log:
        "results/logs/aggregate_scores/table2.log",
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=table3_run_args(),
        prefix=subpath(output.csv, strip_suffix=".csv"),
        model=MODEL,
    shell:
        "lnpeft tables --runs {params.runs} --scores {output.scores} --seed-scores {output.seeds}"
        " --out-prefix {params.prefix} --model {params.model} > {log} 2>&1"


rule plot_curves:
    input:
        grid_runs(),
    output:
        pdf=report(
            "results/figures/curves_learning.pdf",
            caption="../report/curves.rst",
            category="Figures",
            labels={"figure": "Learning curves"},
        ),
        png="results/figures/curves_learning.png",
        data="results/figures/curves_learning.parquet",
    log:
        "results/logs/plot_curves/curves.log",
    benchmark:
        "results/benchmarks/plot_curves/curves.tsv"
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        prefix=subpath(output.pdf, strip_suffix=".pdf"),
    shell:
        "lnpeft figure curves --runs {input} --out {params.prefix} --data {output.data} > {log} 2>&1"
