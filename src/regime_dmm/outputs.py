"""Writing a fit to disk: CSV, JSON, the checkpoint and the plots, all or nothing.

Everything is written into a temporary folder beside the destination and moved into
place at the end, so a failed run leaves no half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ._version import __version__
from .checkpoints import read_checkpoint
from .errors import RegimeDMMError
from .results import RegimeFit

CHECKPOINT_NAME = "model.pt"
CHECKPOINT_FORMAT = "regime-dmm-checkpoint/1"


def checkpoint_payload(fit: RegimeFit) -> dict:
    """Tensors and plain data only, so it loads with ``torch.load(weights_only=True)``."""
    params = {}
    if fit.param_state is not None:
        params = {name: t.detach().clone() for name, t in fit.param_state["params"].items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "package_version": __version__,
        "config": fit.config.to_dict(),
        "regimes": list(fit.regimes),
        "markets": [m.name for m in fit.markets],
        "seed": fit.seed,
        "data": {"path": fit.data_path, "simulated": fit.simulated, "fingerprint": fit.data_fingerprint},
        "params": params,
    }


def load_checkpoint(path: str | Path) -> dict:
    """Read a model checkpoint safely (no code execution); clear errors for anything else."""
    return read_checkpoint(path, CHECKPOINT_FORMAT, "model checkpoint", required=("config", "params"))


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder ``tmp`` to ``out`` (replacing an existing ``out``)."""
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, backup)
        os.replace(tmp, out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_outputs(
    fit: RegimeFit, out_dir: str | Path, *, overwrite: bool = False, plots: bool = True, posterior: bool = True,
    num_samples: int = 200,
) -> Path:
    """Write regimes.csv, summary.json, history.csv, model.pt, posterior.nc and PNG plots into ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise RegimeDMMError(f"output folder {out_dir} exists and is not empty: use --overwrite or another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        fit.regimes_frame().to_csv(tmp / "regimes.csv", index=False, float_format="%.6f")
        with open(tmp / "summary.json", "w", encoding="utf-8") as fh:
            json.dump(fit.summary(), fh, indent=2, sort_keys=False)
            fh.write("\n")
        fit.history.to_csv(tmp / "history.csv", index=False, float_format="%.8g")
        torch.save(checkpoint_payload(fit), tmp / CHECKPOINT_NAME)
        idata = None
        if posterior:
            from .arviz_export import save_netcdf, to_inference_data

            idata = to_inference_data(fit, num_samples=num_samples, seed=fit.seed)
            save_netcdf(idata, tmp / "posterior.nc")
        if plots:
            from .plots import save_all

            save_all(fit, tmp)
            if idata is not None:
                from .posterior_plots import save_posterior_plots

                save_posterior_plots(idata, tmp)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


