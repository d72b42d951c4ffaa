"""DDIM transitions with log-probabilities, and the step-wise (SPO / MSPO) resampler."""
