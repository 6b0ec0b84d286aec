# Validation, derived lists, shared paths and input functions. No numerics here: logic lives in
# src/lnpeft; this file only builds paths and lists from the validated config.

import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from lnpeft.plan import runtime
from lnpeft.data import user_tasks
from lnpeft.plan.pack_plan import member_index, pack_size, plan_packs
from lnpeft.data.tasks import get_task
from lnpeft.train import compile_cache
from lnpeft.plan.workflow_config import (
    CUSTOM_TASKS_DIR,
    check_config,
    check_schema,
    coerce_numbers,
    fmt_lr,
    for_task,
    fraction_seeds,
    method_learning_rates,
    resolve_glue_dir,
    write_custom_tasks,
)

SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
# YAML 1.1 reads 1e-3 (no dot) as text: numbers written so become numbers before any check
coerce_numbers(config, SCHEMA)
# every bad key in one short message naming the allowed values (validate() shows only the first,
# inside a dump of the whole schema); validate() then fills in the schema's defaults
check_schema(config, SCHEMA)
validate(config, schema="../schemas/config.schema.yaml")
check_config(config)  # cross-key checks the JSON schema cannot express (fails before any job)
# jobs resolve custom task names from these files (local and cluster jobs alike: it is in envvars)
os.environ[user_tasks.ENV] = write_custom_tasks(config)
# torch.compile's caches in one folder on the shared disk (training.compile_cache): a job whose model
# and method an earlier job compiled reads the compiled graphs instead of compiling for a minute
COMPILE_CACHE = compile_cache.cache_folder(config["training"].get("compile_cache"))
if COMPILE_CACHE:
    os.environ[compile_cache.ENV] = COMPILE_CACHE

MODEL = config["model"]["name"]
TASKS = list(config["tasks"])
CUSTOM = [t for t in TASKS if get_task(t).user_defined]
GLUE_TASKS = [t for t in TASKS if t not in CUSTOM]  # the GLUE server's stages (submission, Table 3)
if CUSTOM and config.get("submission", {}).get("methods"):
    print(
        f"lnpeft: custom tasks {', '.join(CUSTOM)} are not GLUE tasks: the submission zip and Table 3 "
        "(GLUE test server) leave them out",
        file=sys.stderr,
    )
SEEDS = list(config["seeds"])
# each task's view of the config: per_task.<task> over the global keys (caps, training, grids, drift)
TASK_CONFIG = {t: for_task(config, t) for t in TASKS}
METHODS = list(config["methods"])
FRACTIONS = config["fractions"]
SCHEMES = list(FRACTIONS["schemes"])
FRACTION_VALUES = list(FRACTIONS["values"])
FRACTION_SEEDS = fraction_seeds(config)
# Figure 1's full fine-tunes; drift.activate: false leaves them out (a model too large to fine-tune fully)
DRIFT = config["drift"]["activate"]
CHECKPOINT = f"results/checkpoints/{MODEL}"
# packed training (src/lnpeft/plan/pack_plan.py): which parameter-efficient runs share a GPU job
PACK_SIZE = pack_size(config)
PACKS = {(p.task, p.seed, p.lr, p.name): p for p in plan_packs(config, TASKS)}
PACK_OF = member_index(list(PACKS.values()))
# compute jobs read only results/: no network on compute nodes
OFFLINE = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1"
# Rules call the `lnpeft` console script: put the bin/ of the Python that runs Snakemake (the
# project's venv or conda env) first on PATH, so jobs use that installation, activated or not.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


envvars:
    "PATH",
    user_tasks.ENV,
    *([compile_cache.ENV] if COMPILE_CACHE else []),


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    task=r"[a-z0-9]+",
    split=r"[a-z_]+",
    method=r"full|bitfit|layernorm|random",
    scheme=r"individual|global|cv",
    fraction=r"[0-9.]+",
    lr=r"[0-9.e+-]+",
    seed=r"\d+",
    pack=r"(grid|fractions)-p\d+",
    member=r"bitfit|layernorm|random|fisher-(individual|global|cv)-f[0-9.]+",


# ---------------------------------------------------------------- data and checkpoint


def data_splits(task):
    """HF split names of a task that the run needs (train, dev and test splits)."""
    return list(get_task(task).splits)


def data_path(task, split):
    return f"results/data/{task}/{split}.parquet"


def data_outputs(task):
    return [data_path(task, s) for s in data_splits(task)]


def glue_dir():
    return resolve_glue_dir(config["data"].get("glue_dir"))


def get_glue_files(wildcards):
    """The files a task reads (GLUE with source tsv, or a custom task's), so a changed or missing
    file is seen by Snakemake; a custom task's definition is an input too."""
    spec = get_task(wildcards.task)
    if spec.user_defined:
        return [f"{CUSTOM_TASKS_DIR}/{spec.name}.json", *user_tasks.input_files(spec.name)]
    if config["data"].get("source", "hub") != "tsv":
        return []
    from lnpeft.data.glue_tsv import split_file

    held = held_out_splits(wildcards.task)
    return [str(split_file(glue_dir(), spec, s)) for s in spec.splits if s not in held]


def held_out_caps(task):
    """The task's data.held_out: {validation: N, test: M} rows taken from its training file."""
    return {k: n for k, n in TASK_CONFIG.get(task, config)["data"].get("held_out", {}).items() if n is not None}


def held_out_splits(task):
    """The task's splits made of held-out training rows: their own files are not read."""
    spec, caps = get_task(task), held_out_caps(task)
    return [*(spec.dev_splits if "validation" in caps else ()), *(spec.test_splits if "test" in caps else ())]


def prepare_data_source_flags(wildcards):
    """`lnpeft prepare-data` source flags: --glue-dir DIR (tsv) or --hub --hub-path P (hub); none for
    a custom task (its definition names its files)."""
    if get_task(wildcards.task).user_defined:
        return ""
    data = config["data"]
    if data.get("source", "hub") == "tsv":
        return f"--glue-dir {shlex.quote(glue_dir())}"
    return f"--hub --hub-path {shlex.quote(data.get('hub_path', 'nyu-mll/glue'))}"


def prepare_data_subsample_flags(wildcards):
    """--subsample-{train,validation,test} N for every split kind that the task's data.subsample caps
    (tasks the run only reads, such as WNLI and AX for the submission, take the global caps)."""
    caps = TASK_CONFIG.get(wildcards.task, config)["data"].get("subsample", {})
    return " ".join(f"--subsample-{k} {n}" for k, n in sorted(caps.items()) if n is not None)


def prepare_data_held_out_flags(wildcards):
    """--held-out-{validation,test} N: dev/test rows taken from the training file (data.held_out)."""
    return " ".join(f"--held-out-{k} {n}" for k, n in sorted(held_out_caps(wildcards.task).items()))


def init_dir(task, seed):
    return f"results/init/{MODEL}/{task}/seed{seed}"


# ---------------------------------------------------------------- fine-tuning grid


def method_lrs(method, task):
    """A task's learning-rate grid of a method (its own, else full vs the parameter-efficient ones)."""
    return [fmt_lr(lr) for lr in method_learning_rates(TASK_CONFIG[task], method)]


def fraction_lrs(task):
    """A task's learning-rate grid of the Fisher-subset runs."""
    return [fmt_lr(lr) for lr in TASK_CONFIG[task]["fractions"]["learning_rates"]]


def task_param(section, key, default=None):
    """A rule parameter read from the job's task's config (per_task over the global keys)."""
    return lambda wildcards: TASK_CONFIG[wildcards.task][section].get(key, default)


def run_dir(task, method, lr, seed):
    return f"results/runs/{MODEL}/{task}/{method}/lr{lr}_seed{seed}"


def fisher_method(scheme, fraction):
    """Directory name of a Fisher-subset run: fisher-{scheme}-f{fraction}."""
    return f"fisher-{scheme}-f{fraction}"


def grid_runs(tasks=None, methods=None):
    """epochs.parquet of every (task, method, lr, seed) of Table 2."""
    return [
        f"{run_dir(t, m, lr, s)}/epochs.parquet"
        for t in (tasks or TASKS)
        for m in (methods or METHODS)
        for lr in method_lrs(m, t)
        for s in SEEDS
    ]


def fraction_runs(schemes=None):
    """epochs.parquet of every Fisher-subset run (Figures 2 and 5)."""
    return [
        f"{run_dir(t, fisher_method(sc, fmt_lr(f)), fmt_lr(lr), s)}/epochs.parquet"
        for t in TASKS
        for sc in (schemes or SCHEMES)
        for f in FRACTION_VALUES
        for lr in fraction_lrs(t)
        for s in FRACTION_SEEDS
    ]


def training_params():
    """The `training:` hyper-parameters every grid run passes to `lnpeft finetune`."""
    return dict(
        epochs=task_param("training", "epochs"),
        batch_size=task_param("training", "batch_size"),
        eval_batch_size=task_param("training", "eval_batch_size"),
        max_length=task_param("training", "max_length"),
        warmup_ratio=task_param("training", "warmup_ratio", 0.0),
        weight_decay=task_param("training", "weight_decay", 0.0),
        max_grad_norm=task_param("training", "max_grad_norm", 1.0),
        compile=compile_flag,
        recipe=task_param("training", "recipe", "auto"),
        dtype=lookup(dpath="model/dtype", within=config),
    )


def compile_flag(wildcards):
    """training.compile as `lnpeft finetune --compile` spells it (YAML reads true/false as booleans)."""
    value = TASK_CONFIG[wildcards.task]["training"].get("compile", "auto")
    return str(value).lower()


# model.dtype bfloat16: `lnpeft init` saves the inits in bf16 (what its runs load) and `lnpeft fisher`
# holds the model as the runs do; float32 adds nothing to either command, so a float32 results folder
# made before the option existed stays up to date
DTYPE_FLAG = "" if config["model"]["dtype"] == "float32" else f" --dtype {config['model']['dtype']}"
# the `lnpeft finetune` flags of training_params(), as the rules' shell commands use them
TRAINING_FLAGS = (
    "--epochs {params.epochs} --batch-size {params.batch_size}"
    " --eval-batch-size {params.eval_batch_size} --max-length {params.max_length}"
    " --warmup-ratio {params.warmup_ratio} --weight-decay {params.weight_decay}"
    " --max-grad-norm {params.max_grad_norm} --compile {params.compile} --recipe {params.recipe}"
    " --threads {threads} --dtype {params.dtype}"
)
# training.save_state: false drops state.safetensors from every run's outputs; true adds nothing to the
# command, so results made before the option existed stay up to date
TRAINING_FLAGS += "" if config["training"]["save_state"] else " --no-state"


RUN_OUTPUTS = {
    "epochs": "epochs.parquet",
    "predictions": "predictions.parquet",
    "run": "run.json",
    "state": "state.safetensors",
}


def run_outputs(folder):
    """A grid run's output files in `folder` (a results/runs/ pattern): state.safetensors unless
    training.save_state is false."""
    keep_state = config["training"]["save_state"]
    return {name: f"{folder}/{file}" for name, file in RUN_OUTPUTS.items() if name != "state" or keep_state}


# what a single run's rules add: Snakemake's attempt, so a retry of a deterministic failure ends at once
ATTEMPT_FLAG = " --attempt {resources.attempt}"


def drift_batch_size(wildcards):
    """The task's drift.batch_size, or its training.batch_size when that is null."""
    task_config = TASK_CONFIG[wildcards.task]
    return task_config["drift"].get("batch_size") or task_config["training"]["batch_size"]


def finetune_splits(task):
    """(flag, path) of a run's data: train, every dev split, every test split (MNLI also AX's)."""
    spec = get_task(task)
    tests = [data_path(task, s) for s in spec.test_splits]
    tests += [data_path(t, "test") for t in TASKS + ["ax"] if get_task(t).predicted_by == task]
    return (
        [("train", data_path(task, spec.train_split))]
        + [("dev", data_path(task, s)) for s in spec.dev_splits]
        + [("test", p) for p in dict.fromkeys(tests)]
    )


def get_finetune_data(wildcards):
    return [p for _, p in finetune_splits(wildcards.task)]


def finetune_split_args(wildcards):
    """`--train P --dev P [--dev P] --test P ...` for `lnpeft finetune`."""
    return " ".join(f"--{flag} {path}" for flag, path in finetune_splits(wildcards.task))


def pack_dir(task, lr, seed):
    """Where a pack job trains its runs (each in a folder of its own) and writes its status file."""
    return f"results/packs/{MODEL}/{task}/lr{lr}_seed{seed}"


def _not_planned(what):
    return ValueError(
        f"{what} is not among the runs that the config's packs train (tasks, seeds, methods, "
        "learning_rates, fractions); add it to the config, or set training.pack_size: 1 to train "
        "any run path by itself"
    )


def get_pack(wildcards):
    key = (wildcards.task, int(wildcards.seed), wildcards.lr, wildcards.pack)
    if key not in PACKS:
        raise _not_planned(f"pack {wildcards.pack} of {wildcards.task} lr {wildcards.lr} seed {wildcards.seed}")
    return PACKS[key]


def get_pack_masks(wildcards):
    """The Fisher masks a pack's Fisher-subset runs rank their entries by."""
    schemes = dict.fromkeys(m.scheme for m in get_pack(wildcards).members if m.scheme)
    return [f"results/masks/{MODEL}/{s}/{wildcards.task}.parquet" for s in schemes]


def pack_member_args(wildcards):
    """`--member method=M,lr=LR,out=DIR[,mask=P,fraction=F]` per run of the pack."""
    folder = pack_dir(wildcards.task, wildcards.lr, wildcards.seed)
    args = []
    for m in get_pack(wildcards).members:
        extra = (
            f",mask=results/masks/{MODEL}/{m.scheme}/{wildcards.task}.parquet,fraction={m.fraction}" if m.scheme else ""
        )
        args.append(f"--member method={m.method},lr={wildcards.lr}{extra},out={folder}/{m.name}")
    return " ".join(args)


def get_member_status(wildcards):
    """The status file of the pack that trains run `member` (collect_run waits for it)."""
    key = (wildcards.task, int(wildcards.seed), wildcards.lr, wildcards.member)
    if key not in PACK_OF:
        raise _not_planned(f"run {wildcards.member} of {wildcards.task} lr {wildcards.lr} seed {wildcards.seed}")
    pack = PACK_OF[key]
    return f"{pack_dir(wildcards.task, wildcards.lr, wildcards.seed)}/{pack.name}.json"


# ---------------------------------------------------------------- named targets


def figure(name):
    return [f"results/figures/{name}.{ext}" for ext in ("pdf", "png")]


def table(n):
    return [f"results/tables/table{n}.{ext}" for ext in ("csv", "md", "tex")]


TARGETS = {
    "data": lambda: [p for t in TASKS for p in data_outputs(t)],
    "pretrained": lambda: [f"{CHECKPOINT}/MANIFEST.json"],
    "init": lambda: [f"{init_dir(t, s)}/config.json" for t in TASKS for s in SEEDS],
    "table1": lambda: table(1),
    "table2": lambda: table(2) + ["results/tables/scores.parquet", "results/tables/scores_seeds.parquet"],
    "table3": lambda: table(3) if GLUE_TASKS else [],  # GLUE test-server scores
    "fig1": lambda: figure("fig1_drift") if DRIFT else [],
    "fig2": lambda: figure("fig2_fractions"),
    "fig3": lambda: figure("fig3_layernorm_fisher"),
    "fig4": lambda: figure("fig4_global_fisher"),
    "fig5": lambda: figure("fig5_schemes"),
    "curves": lambda: figure("curves_learning") + ["results/figures/curves_learning.parquet"],
    "stats": lambda: ["results/stats/kruskal.json"],
    "submission": lambda: (
        [f"results/submission/{MODEL}/{m}.zip" for m in config["submission"]["methods"]] if GLUE_TASKS else []
    ),
}


def get_final_output():
    """Everything `all` builds: every table, figure (Figure 1 with drift.activate; the learning curves),
    the statistics and the submission zips."""
    names = ["table1", "table2", "table3", "fig1", "fig2", "fig3", "fig4", "fig5", "curves", "stats", "submission"]
    return [p for name in names for p in TARGETS[name]()]


# ---------------------------------------------------------------- submission and Table 3
# Every grid run of a method is passed; `lnpeft submission` / `lnpeft table3` pick the best dev
# run per task themselves (the paper metric on the first dev split, as finetune does per epoch).


def method_runs(method, tasks=None):
    """(task, run dir) of every (task, lr, seed) of a method in the Table 2 grid."""
    return [
        (t, run_dir(t, method, lr, s))
        for t in (TASKS if tasks is None else tasks)
        for lr in method_lrs(method, t)
        for s in SEEDS
    ]


def get_method_run_files(wildcards):
    """The submission's runs: GLUE tasks only (the test server knows no custom task)."""
    return [
        f"{d}/{f}"
        for _, d in method_runs(wildcards.method, GLUE_TASKS)
        for f in ("epochs.parquet", "predictions.parquet")
    ]


def test_data(tasks=None):
    """Test-split parquet files of the configured tasks (or of `tasks`)."""
    return [data_path(t, s) for t in (tasks or TASKS) for s in get_task(t).test_splits]


def submission_data():
    """Test splits of the configured tasks, WNLI (majority class of train) and AX (MNLI predicts it)."""
    tasks = list(dict.fromkeys(GLUE_TASKS + ["wnli"] + (["ax"] if "mnli" in TASKS else [])))
    return test_data(tasks) + [data_path("wnli", "train")]


def submission_run_args(wildcards):
    return " ".join(f"{t}={d}" for t, d in method_runs(wildcards.method, GLUE_TASKS))


def table3_run_files(tasks=None):
    """Every grid run's epochs and predictions (Table 2: every task; Table 3: GLUE_TASKS)."""
    return [
        f"{d}/{f}" for m in METHODS for _, d in method_runs(m, tasks) for f in ("epochs.parquet", "predictions.parquet")
    ]


def table3_run_args(tasks=None):
    return " ".join(f"{m}:{t}={d}" for m in METHODS for t, d in method_runs(m, tasks))


def glue_results_file():
    """config submission.glue_results (GLUE server scores for Table 3), or None."""
    return config.get("submission", {}).get("glue_results") or None


# ---------------------------------------------------------------- resources
# Generic needs only (minutes, MB, GPUs); partitions, accounts and GRES live in profiles/.
# Time limits come from src/lnpeft/plan/runtime.py: measured throughput with a margin when
# resources.throughput names a bench JSON, else a conservative fixed rate. They grow with each retry
# (`attempt`), so a job killed at its limit comes back with more time (and resumes from its last
# epoch checkpoint).


def train_runtime(wildcards, attempt):
    """Minutes for one fine-tuning run (a Fisher-subset run has no method wildcard: `fisher`)."""
    return runtime.train_minutes(config, wildcards.task, getattr(wildcards, "method", "fisher"), attempt)


def pack_runtime(wildcards, attempt):
    """Minutes for a pack: its runs one after another, with one start-up (src/lnpeft/plan/runtime.py)."""
    methods = [m.method for m in get_pack(wildcards).members]
    return runtime.pack_minutes(config, wildcards.task, methods, attempt)


def drift_runtime(wildcards, attempt):
    """Minutes for the full fine-tune behind Figure 1."""
    return runtime.drift_minutes(config, wildcards.task, attempt)


def fisher_runtime(wildcards, attempt):
    """Minutes for one pass of per-sample gradients."""
    return runtime.fisher_minutes(config, wildcards.task, attempt)


def gpu_memory_mb_run(wildcards):
    """GPU memory of one run's job (full fine-tuning: gradients and AdamW state of every weight)."""
    full = getattr(wildcards, "method", "fisher") == "full"
    return runtime.gpu_memory_mb(config, wildcards.task, 1, full=full)


def gpu_memory_mb_pack(wildcards):
    """GPU memory of a pack: the frozen model once, every member's activations."""
    return runtime.gpu_memory_mb(config, wildcards.task, len(get_pack(wildcards).members))


def gpu_memory_mb_full(wildcards):
    """GPU memory of the full fine-tune behind Figure 1."""
    return runtime.gpu_memory_mb(config, wildcards.task, 1, full=True)


def job_attempt(wildcards, attempt):
    """Snakemake's attempt of the job (1, then 2 and 3 on retries): `lnpeft finetune --attempt`
    fails a retry at once when the run's last attempt failed deterministically."""
    return attempt


def gpu_mem_mb(wildcards, attempt):
    """Host memory of a GPU job (the model, the tokenised splits, the optimizer state): 32 GB, more
    for a model whose fp32 load needs it (lnpeft.plan.runtime.host_memory_mb)."""
    return runtime.host_memory_mb(config, 32000, attempt)


def init_mem_mb(wildcards, attempt):
    """Host memory of `lnpeft init`, which loads the checkpoint in fp32: 8 GB, more for a larger model."""
    return runtime.host_memory_mb(config, 8000, attempt)
