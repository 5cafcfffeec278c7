"""A tabular feed-forward network in PyTorch, wrapped as a scikit-learn regressor.

Device-aware (``device="auto"`` takes CUDA when the pod has a GPU), deterministic (seeded generators and
``torch.use_deterministic_algorithms`` while fitting), with early stopping on the last
``validation_fraction`` of the rows (they are time-ordered, so this is a forward-looking validation).
The fitted network is moved to the CPU, so the model server needs no GPU to load or serve it.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from torch import nn

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else is taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def _deterministic(seed: int, device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        # cuBLAS needs this before its first call to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _network(n_inputs: int, hidden_units: int, layers: int, dropout: float) -> nn.Sequential:
    blocks: list[nn.Module] = []
    width = n_inputs
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden_units), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden_units
    blocks.append(nn.Linear(width, 1))
    return nn.Sequential(*blocks)


class TorchTabularRegressor(RegressorMixin, BaseEstimator):
    """MLP regressor on standardised numeric features, trained with Adam and early stopping.

    Args:
        hidden_units: Width of each hidden layer.
        layers: Number of hidden layers.
        dropout: Dropout after each hidden layer.
        learning_rate: Adam learning rate.
        weight_decay: Adam weight decay.
        batch_size: Rows per optimiser step.
        max_epochs: Upper bound on passes over the training rows.
        patience: Stop after this many epochs without a better validation loss.
        validation_fraction: Last fraction of the (time-ordered) rows used for early stopping.
        device: ``auto``, ``cpu`` or ``cuda[:n]``.
        random_state: Seed of weights, dropout and batch order.
    """

    def __init__(
        self,
        hidden_units: int = 128,
        layers: int = 2,
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        batch_size: int = 256,
        max_epochs: int = 200,
        patience: int = 10,
        validation_fraction: float = 0.15,
        device: str = "auto",
        random_state: int = 42,
    ) -> None:
        self.hidden_units = hidden_units
        self.layers = layers
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> TorchTabularRegressor:  # noqa: N803 - scikit-learn signature
        """Fit on ``X`` (rows in time order) and ``y``; keeps the weights of the best validation epoch."""
        x = np.asarray(X, dtype=np.float32)
        target = np.asarray(y, dtype=np.float32).reshape(-1, 1)
        if len(x) < 10:
            raise ValueError(f"TorchTabularRegressor needs at least 10 rows, got {len(x)}")
        self.n_features_in_ = x.shape[1]
        self.x_mean_, self.x_std_ = x.mean(axis=0), x.std(axis=0)
        self.x_std_[self.x_std_ == 0] = 1.0
        self.y_mean_, self.y_std_ = float(target.mean()), float(target.std() or 1.0)
        x = (x - self.x_mean_) / self.x_std_
        target = (target - self.y_mean_) / self.y_std_
        n_val = max(1, int(len(x) * self.validation_fraction))
        device = resolve_device(self.device)
        with _deterministic(self.random_state, device):
            self._train(x[:-n_val], target[:-n_val], x[-n_val:], target[-n_val:], device)
        return self

    def _train(
        self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray, device: torch.device
    ) -> None:
        net = _network(x_tr.shape[1], self.hidden_units, self.layers, self.dropout).to(device)
        optimiser = torch.optim.Adam(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        loss_fn = nn.MSELoss()
        xt, yt = torch.from_numpy(x_tr).to(device), torch.from_numpy(y_tr).to(device)
        xv, yv = torch.from_numpy(x_va).to(device), torch.from_numpy(y_va).to(device)
        order = torch.Generator().manual_seed(self.random_state)
        best_loss, best_state, best_epoch, stale, steps = float("inf"), None, 0, 0, 0
        started = time.perf_counter()
        for epoch in range(1, self.max_epochs + 1):
            net.train()
            for idx in torch.randperm(len(xt), generator=order).split(self.batch_size):
                idx = idx.to(device)
                optimiser.zero_grad()
                loss_fn(net(xt[idx]), yt[idx]).backward()
                optimiser.step()
                steps += 1
            net.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(net(xv), yv))
            if val_loss < best_loss - 1e-6:
                best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(net.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        net.load_state_dict(best_state or net.state_dict())
        self.network_ = net.cpu().eval()
        self.training_report_ = {
            "device": str(device),
            "epochs": epoch,
            "best_epoch": best_epoch,
            "best_val_mse_scaled": best_loss,
            "fit_seconds": seconds,
            "step_ms": 1000 * seconds / max(steps, 1),
        }
        log.info("torch tabular model: %s", self.training_report_)

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803 - scikit-learn signature
        """Predictions in the target's units (computed on the CPU)."""
        x = (np.asarray(X, dtype=np.float32) - self.x_mean_) / self.x_std_
        with torch.no_grad():
            out = self.network_(torch.from_numpy(x.astype(np.float32))).numpy().ravel()
        return out * self.y_std_ + self.y_mean_
