"""R-CNN's class-specific bounding-box regression: ridge regression from a region's pool5 feature to
the box correction (Girshick et al., CVPR 2014, appendix C; the released code's
``rcnn_train_bbox_regressor.m`` / ``rcnn_predict_bbox_regressor.m``).

Targets are the paper's ``(dx, dy, dw, dh)`` taking a proposal ``P`` to its ground truth ``G``::

    dx = (Gx - Px) / Pw    dy = (Gy - Py) / Ph    dw = log(Gw / Pw)    dh = log(Gh / Ph)

(centres and sizes with widths ``x2 - x1``): :data:`PAPER_BOX_CODER`, detkit's
:class:`~detkit.ops.boxes.BoxCoder` with unit weights, which is torchvision's at weights (1, 1, 1, 1).

Fitting one class (:func:`fit_ridge`), as the released code does:

1. targets are centred and decorrelated (whitened): ``Y' = (Y - mu) T`` with
   ``T = V diag(1 / sqrt(d + 0.001)) V^T`` from the eigen-decomposition ``V diag(d) V^T`` of their
   covariance; prediction maps back with ``T_inv = V diag(sqrt(d + 0.001)) V^T``;
2. a constant 1 is appended to the features (the bias, regularised like every weight);
3. ``beta = argmin |A beta - Y'|^2 + lambda |beta|^2`` (``lambda = 1000``), solved by a Cholesky
   factorisation of ``A^T A + lambda I`` (``[D+1, D+1]``), or, when there are fewer samples than
   features, of ``A A^T + lambda I`` (``[N, N]``): ``beta = A^T (A A^T + lambda I)^-1 Y'``, the same
   minimiser (push-through identity) at a fraction of the cost for pool5's thousands of dimensions.

Everything is computed in float64. A class without samples gets the identity regressor (zero deltas).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detkit.ops.boxes import BoxCoder

__all__ = ["PAPER_BOX_CODER", "RidgeFit", "fit_ridge", "predict_deltas", "WHITENING_EPS"]

# The paper's parametrisation: no target normalisation weights.
PAPER_BOX_CODER = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
# Added to the target covariance's eigenvalues before whitening (the released code's 0.001).
WHITENING_EPS = 1e-3


class RidgeFit:
    """One class's regressor: ``beta [D + 1, 4]`` (last row: bias), target mean ``mu [4]`` and the
    inverse whitening ``t_inv [4, 4]``; :func:`predict_deltas` applies it."""

    def __init__(self, beta: Tensor, mu: Tensor, t_inv: Tensor, num_samples: int):
        self.beta, self.mu, self.t_inv, self.num_samples = beta, mu, t_inv, num_samples

    @classmethod
    def identity(cls, dim: int) -> RidgeFit:
        return cls(torch.zeros(dim + 1, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                   torch.eye(4, dtype=torch.float64), 0)


def _whitening(targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    mu = targets.mean(dim=0)
    centred = targets - mu
    covariance = centred.T @ centred / targets.shape[0]
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    root = (eigenvalues + WHITENING_EPS).sqrt()
    t = vectors @ torch.diag(1.0 / root) @ vectors.T
    t_inv = vectors @ torch.diag(root) @ vectors.T
    return mu, t, t_inv


def fit_ridge(features: Tensor, targets: Tensor, lam: float = 1000.0) -> RidgeFit:
    """Fit one class's regressor on ``features [N, D]`` and paper targets ``[N, 4]`` (module docstring)."""
    n, dim = features.shape
    if n == 0:
        return RidgeFit.identity(dim)
    x = features.to(torch.float64)
    y = targets.to(torch.float64)
    mu, t, t_inv = _whitening(y)
    y = (y - mu) @ t
    a = torch.cat((x, torch.ones(n, 1, dtype=torch.float64, device=x.device)), dim=1)
    if dim + 1 <= n:
        gram = a.T @ a
        gram.diagonal().add_(lam)
        beta = torch.cholesky_solve(a.T @ y, torch.linalg.cholesky(gram))
    else:
        gram = a @ a.T
        gram.diagonal().add_(lam)
        beta = a.T @ torch.cholesky_solve(y, torch.linalg.cholesky(gram))
    return RidgeFit(beta, mu, t_inv, n)


def predict_deltas(features: Tensor, beta: Tensor, mu: Tensor, t_inv: Tensor) -> Tensor:
    """Paper deltas ``[N, 4]`` for ``features [N, D]`` with one class's ``beta [D + 1, 4]``, ``mu [4]``
    and ``t_inv [4, 4]`` (the whitening undone). Batched: ``beta [C, D + 1, 4]``, ``mu [C, 1, 4]``,
    ``t_inv [C, 4, 4]`` with features ``[1, N, D]`` (or ``[C, N, D]``) give ``[C, N, 4]``."""
    whitened = features @ beta[..., :-1, :] + beta[..., -1:, :]
    return whitened @ t_inv + mu
