"""Step time of the torch tabular model on each device this machine has (CPU, and CUDA when present).

Usage: ``.venv/bin/python scripts/torch_steptime.py [--days 28] [--batch-size 256]``. Trains
``TorchTabularRegressor`` on real bike-demand rows featurised exactly as in the pipeline and prints, per
device, epochs run, milliseconds per optimiser step and the holdout RMSE, so CPU and GPU runs compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.features import FeatureBuilder
from tasks.models.torch_tabular import TorchTabularRegressor
from tasks.settings import get_settings
from tasks.spec import load_spec


def main() -> None:
    """Print one line per device."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=120, help="days of 2011-2012 data to train on")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    spec = load_spec("bike_demand")
    data = pd.read_csv(Path(get_settings().shared_datasets) / spec.source.dataset)
    days = sorted(data.dteday.unique())[: args.days + 7]
    data = data[data.dteday.isin(days)]
    x = FeatureBuilder.from_spec(spec.features).transform(data[spec.schema_.input_columns])
    train = data.dteday.isin(days[:-7]).to_numpy()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{int(train.sum())} training rows, {x.shape[1]} features, batch {args.batch_size}")  # noqa: T201
    for device in devices:
        model = TorchTabularRegressor(device=device, batch_size=args.batch_size, max_epochs=60, patience=60)
        model.fit(x[train], data.cnt[train])
        rmse = float(np.sqrt(((model.predict(x[~train]) - data.cnt[~train]) ** 2).mean()))
        r = model.training_report_
        line = f"{device:>5}: {r['epochs']} epochs, {r['step_ms']:.2f} ms/step, fit {r['fit_seconds']:.1f}s"
        print(f"{line}, RMSE {rmse:.1f}")  # noqa: T201


if __name__ == "__main__":
    main()
