"""Writing a fit to disk: CSV, JSON, the checkpoint, the ArviZ netCDF and the plots, all or nothing.

Everything is written into a temporary folder beside the destination and moved into
place at the end (:func:`~regime_dmm.atomic.staging_folder`), so a failed run leaves no
half-written output.
"""

from __future__ import annotations

import json
from pathlib import Path

from .arviz_export import save_netcdf, to_inference_data
from .atomic import staging_folder
from .checkpoints import write_checkpoint
from .cross_market import plot_cross_market
from .errors import RegimeDMMError
from .persistence import MODEL_FILE, model_payload
from .plots import save_all
from .posterior_plots import save_posterior_plots
from .results import RegimeFit

__all__ = ["write_outputs"]


def write_outputs(
    fit: RegimeFit,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    plots: bool = True,
    posterior: bool = True,
    num_samples: int = 200,
) -> Path:
    """Write regimes.csv, summary.json, history.csv, model.pt, posterior.nc and PNG plots into ``out_dir``.

    ``posterior``: also the ArviZ export (``num_samples`` draws with the normal guide);
    ``plots``: also the PNG plots. Raises :class:`RegimeDMMError` when ``out_dir`` exists, is not
    empty and ``overwrite`` is False. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise RegimeDMMError(f"output folder {out_dir} exists and is not empty: use --overwrite or another --out")
    with staging_folder(out_dir) as tmp:
        fit.regimes_frame().to_csv(tmp / "regimes.csv", index=False, float_format="%.6f")
        with open(tmp / "summary.json", "w", encoding="utf-8") as fh:
            json.dump(fit.summary(), fh, indent=2, sort_keys=False)
            fh.write("\n")
        fit.history.to_csv(tmp / "history.csv", index=False, float_format="%.8g")
        write_checkpoint(model_payload(fit), tmp / MODEL_FILE)
        idata = None
        if posterior:
            idata = to_inference_data(fit, num_samples=num_samples, seed=fit.seed)
            save_netcdf(idata, tmp / "posterior.nc")
        if plots:
            save_all(fit, tmp)
            if len(fit.markets) > 1:
                figure = plot_cross_market(fit, fit.cross_market)
                try:
                    figure.savefig(tmp / "cross_market.png", dpi=110, facecolor="white")
                finally:
                    figure.clear()
            if idata is not None:
                save_posterior_plots(idata, tmp)
    return out_dir
