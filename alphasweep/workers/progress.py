"""Progress lines on the driver for each worker report (Ray Train runs are silent otherwise)."""

from __future__ import annotations

import ray.train

_SHOWN = ("loss", "heldout_nll", "lr", "tokens_per_s", "selected_share", "mean_p")


class PrintProgress(ray.train.UserCallback):
    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0]
        parts = [f"{k}={m[k]:.4g}" for k in _SHOWN if k in m]
        saved = f"  checkpoint {checkpoint.path}" if checkpoint else ""
        print(f"{self.prefix}step {m.get('step', '?')}: {' '.join(parts)}{saved}", flush=True)
