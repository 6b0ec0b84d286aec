# Stage drift (paper Section 2, Figure 1): a full fine-tune per task from its init checkpoint,
# then D = mean |after - before| per (layer, component, kind) (src/lnpeft/analysis/drift.py). The
# fine-tuned weights are temporary: only the drift table is kept.


rule finetune_for_drift:
    input:
        init=lambda w: f"{init_dir(w.task, SEEDS[0])}/config.json",
        weights=lambda w: f"{init_dir(w.task, SEEDS[0])}/model.safetensors",
        train=lambda w: data_path(w.task, "train"),
        dev=lambda w: data_path(w.task, get_task(w.task).dev_splits[0]),
    output:
        model=temp(directory("results/drift/{model}/{task}.finetuned")),
        run=temp(directory("results/drift/{model}/{task}.run")),
    log:
        "results/logs/finetune_for_drift/{model}/{task}.log",
    benchmark:
        "results/benchmarks/finetune_for_drift/{model}/{task}.tsv"
    conda:
        "../../envs/lnpeft.yaml"
    threads: 4
    resources:
        mem_mb=gpu_mem_mb,
        runtime=drift_runtime,
        gpu=1,
        gpu_memory_mb=gpu_memory_mb_full,
        attempt=job_attempt,
    params:
        init=subpath(input.init, parent=True),
        seed=SEEDS[0],
        lr=task_param("drift", "learning_rate"),
        epochs=task_param("drift", "epochs"),
        batch_size=drift_batch_size,
        eval_batch_size=task_param("training", "eval_batch_size"),
        max_length=task_param("training", "max_length"),
        # the grid's optimiser settings: Figure 1's full fine-tune is Table 2's, but for lr and epochs
        warmup_ratio=task_param("training", "warmup_ratio", 0.0),
        weight_decay=task_param("training", "weight_decay", 0.0),
        max_grad_norm=task_param("training", "max_grad_norm", 1.0),
        compile=compile_flag,
        recipe=task_param("training", "recipe", "auto"),
    shell:
        f"{OFFLINE} lnpeft finetune --init {{params.init}} --train {{input.train}} --dev {{input.dev}}"
        " --task {wildcards.task} --method full --lr {params.lr} --seed {params.seed}"
        " --epochs {params.epochs} --batch-size {params.batch_size}"
        " --eval-batch-size {params.eval_batch_size} --max-length {params.max_length} --threads {threads}"
        " --warmup-ratio {params.warmup_ratio} --weight-decay {params.weight_decay}"
        " --max-grad-norm {params.max_grad_norm} --compile {params.compile} --recipe {params.recipe}"
        " --attempt {resources.attempt}"
        " --out {output.run} --save-model {output.model} > {log} 2>&1"


rule compute_drift:
    input:
        init=lambda w: f"{init_dir(w.task, SEEDS[0])}/config.json",
        post="results/drift/{model}/{task}.finetuned",
    output:
        "results/drift/{model}/{task}.parquet",
    log:
        "results/logs/compute_drift/{model}/{task}.log",
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=15,
    params:
        init=subpath(input.init, parent=True),
    shell:
        f"{OFFLINE} lnpeft drift --pre {{params.init}} --post {{input.post}} --out {{output}} --threads {{threads}}"
        " > {log} 2>&1"


rule plot_fig1:
    input:
        expand("results/drift/{model}/{task}.parquet", model=MODEL, task=TASKS),
    output:
        pdf=report(
            "results/figures/fig1_drift.pdf",
            caption="../report/fig1.rst",
            category="Figures",
            labels={"figure": "Figure 1 (drift)"},
        ),
        png="results/figures/fig1_drift.png",
    log:
        "results/logs/plot_fig1/fig1.log",
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        drift=expand("{task}=results/drift/{model}/{task}.parquet", model=MODEL, task=TASKS),
        prefix=subpath(output.pdf, strip_suffix=".pdf"),
    shell:
        "lnpeft figure fig1 --drift {params.drift} --out {params.prefix} > {log} 2>&1"
