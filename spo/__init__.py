"""spo-repro: an end-to-end, tested reproduction harness for SPO (arXiv 2406.04314).

The package never imports snakemake; every stage is ``python -m spo <stage> ...`` and is
importable and testable on its own. Heavy libraries (torch, diffusers, transformers) are
imported inside the stages that need them so that light stages start fast.
"""

__version__ = "0.1.0"
