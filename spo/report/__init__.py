"""Report-level helpers: figures, GenEval (Table 3), HTML renderings for the Snakemake report."""
