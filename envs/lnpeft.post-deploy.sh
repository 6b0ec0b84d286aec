#!/usr/bin/env bash
# Run by Snakemake inside the freshly created envs/lnpeft.yaml environment (--sdm conda), from
# the workflow's working directory: installs this repository's `lnpeft` package into it.
# Editable, so that src/ changes reach the jobs; --no-deps, because the env file pins them all.
# Set LNPEFT_REPO when Snakemake runs from another directory than the repository root.
set -euo pipefail
repo=${LNPEFT_REPO:-$PWD}
if ! grep -qs '^name = "lnpeft"' "$repo/pyproject.toml"; then
  echo "envs/lnpeft.post-deploy.sh: $repo is not the lnpeft repository (no pyproject.toml naming lnpeft);" \
       "run snakemake from the repository root or set LNPEFT_REPO=/path/to/lnpeft" >&2
  exit 1
fi
python -m pip install --no-deps -e "$repo"
