"""alphasweep: search the SFT objective (NLL, f_alpha, thresholds) per (model, domain) pair on Ray."""

__version__ = "0.1.0"
