#!/usr/bin/env bash
# Run by `snakemake --sdm conda` inside the new environment, in Snakemake's working directory: the checkout.
set -euo pipefail
if ! grep -q '^name = "fedbt-bench"' pyproject.toml 2>/dev/null; then
    echo "fedbt env: run snakemake from the fedbt-bench checkout (pyproject.toml not found in $PWD)" >&2
    exit 1
fi
pip install -e .
