"""lnpeft: LayerNorm parameter-efficient fine-tuning, reproduced as a Snakemake workflow."""

__version__ = "0.1.0"
