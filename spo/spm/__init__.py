"""Step-aware preference model data and training (issue 4).

``data`` (pairs schema), ``tiny_pairs`` (tiny-profile pairs), ``pickapic`` (Pick-a-Pic v1),
``backbone`` (SD-1.5 / SDXL x̂0 and VAE), ``objective`` (pure loss/accuracy/schedule),
``train`` (the loop, checkpoints, validation), ``stage`` (CLI entry points and paths). The model
itself and its formats are ``spo.preference.spm_model`` / ``spo.preference.spm_io``.
"""
