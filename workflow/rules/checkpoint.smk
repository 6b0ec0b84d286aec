# Stage checkpoint: cache the pretrained checkpoint (hub snapshot, folder or Python package) under
# results/checkpoints/{model}/ with MANIFEST.json (src/lnpeft/model/checkpoint.py); then one seeded
# classification head per (task, seed) on top of it (src/lnpeft/model/init.py), read offline.


rule cache_checkpoint:
    output:
        "results/checkpoints/{model}/MANIFEST.json",
    log:
        "results/logs/cache_checkpoint/{model}.log",
    localrule: True
    conda:
        "../../envs/lnpeft.yaml"
    params:
        source=lookup(dpath="model/source", within=config),
        location=lookup(dpath="model/location", within=config),
        revision=lookup(dpath="model/revision", within=config, default="main"),
        out=subpath(output[0], parent=True),
    shell:
        "lnpeft cache-model --source {params.source} --location {params.location:q}"
        " --revision {params.revision:q} --out {params.out} > {log} 2>&1"


rule init_model:
    input:
        "results/checkpoints/{model}/MANIFEST.json",
    output:
        config="results/init/{model}/{task}/seed{seed}/config.json",
        weights="results/init/{model}/{task}/seed{seed}/model.safetensors",
        info="results/init/{model}/{task}/seed{seed}/init.json",
    log:
        "results/logs/init_model/{model}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/init_model/{model}/{task}/seed{seed}.tsv"
    conda:
        "../../envs/lnpeft.yaml"
    threads: 1
    resources:
        mem_mb=init_mem_mb,
        runtime=15,
    params:
        checkpoint=subpath(input[0], parent=True),
        out=subpath(output.config, parent=True),
        layernorm=" ".join(config["model"]["layernorm"]),
    shell:
        f"{OFFLINE} lnpeft init --checkpoint {{params.checkpoint}} --task {{wildcards.task}}"
        " --seed {wildcards.seed} --out {params.out} --layernorm {params.layernorm}"
        f"{DTYPE_FLAG} > {{log}} 2>&1"
