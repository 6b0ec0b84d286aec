# lnpeft: "LayerNorm: A key component in parameter-efficient fine-tuning", end to end.
#
# results/
#   data/{task}/{split}.parquet            GLUE as typed parquet (+ MANIFEST.json per task)
#   checkpoints/{model}/                   the cached pretrained checkpoint (+ MANIFEST.json)
#   init/{model}/{task}/seed{seed}/        encoder + seeded head: the start of every run
#   drift/{model}/{task}.parquet           Eq. 1 per component (Figure 1)
#   fisher/{model}/{task}.parquet          Eq. 2 per LayerNorm entry (+ .components.parquet)
#   masks/{model}/{scheme}/{task}.parquet  Fisher ranks for individual / global / cv subsets
#   runs/{model}/{task}/{method}/lr{lr}_seed{seed}/   one fine-tuning run (epochs.parquet, ...)
#   packs/{model}/{task}/lr{lr}_seed{seed}/  packed runs' training folders and each pack's status
#   tables/, figures/, stats/, submission/ the paper's Tables 1-3, Figures 1-5 (+ learning curves),
#                                          statistics, GLUE zip
#   logs/, benchmarks/                     one log and one benchmark per job


import os

from snakemake.utils import min_version

min_version("9.0")


# the paper's setup from the repository, whatever the working directory; overlays via --configfile
configfile: os.path.join(workflow.basedir, "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/checkpoint.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/drift.smk"
include: "workflow/rules/fisher.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),


# Named targets: `snakemake --profile profiles/local fig3` rebuilds one figure and what it needs.


rule data:
    input:
        TARGETS["data"](),


rule pretrained:
    input:
        TARGETS["pretrained"](),


rule init:
    input:
        TARGETS["init"](),


rule table1:
    input:
        TARGETS["table1"](),


rule table2:
    input:
        TARGETS["table2"](),


rule table3:
    input:
        TARGETS["table3"](),


rule fig1:
    input:
        TARGETS["fig1"](),


rule fig2:
    input:
        TARGETS["fig2"](),


rule fig3:
    input:
        TARGETS["fig3"](),


rule fig4:
    input:
        TARGETS["fig4"](),


rule fig5:
    input:
        TARGETS["fig5"](),


rule curves:
    input:
        TARGETS["curves"](),


rule stats:
    input:
        TARGETS["stats"](),


rule submission:
    input:
        TARGETS["submission"](),


localrules:
    all,
    data,
    pretrained,
    init,
    table1,
    table2,
    table3,
    fig1,
    fig2,
    fig3,
    fig4,
    fig5,
    curves,
    stats,
    submission,
    prepare_glue,
    cache_checkpoint,
