"""Preference models for the step-wise sampler: score decoded x̂0 images, optionally at timestep t.

Every preference model has one call signature (see ``base.PreferenceModel``) and is chosen by name
from ``PREFERENCE_MODELS`` via ``build_preference``; the SPO sampler never knows which one it uses.
"""

from spo.preference.base import PreferenceModel, build_preference, registered_preferences

__all__ = ["PreferenceModel", "build_preference", "registered_preferences"]
