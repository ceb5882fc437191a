"""The DSCMR objective J = J1 + lambda*J2 + eta*J3 and the ridge closed form of the classifier."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from model.config import LossConfig


@dataclass
class LossTerms:
    """The total objective and its three (unweighted) parts, as tensors."""

    total: torch.Tensor
    j1: torch.Tensor
    j2: torch.Tensor
    j3: torch.Tensor


def relevance(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """S_ij = 1 when label vectors i and j share at least one class (works for one-hot and multi-hot)."""
    return (labels_a.float() @ labels_b.float().T > 0).float()


def _distance(a: torch.Tensor, b: torch.Tensor, form: str) -> torch.Tensor:
    """Released code: mean of per-row L2 norms. Paper: (1/n) * Frobenius norm of the difference."""
    diff = a - b
    if form == "released":
        # vector_norm's backward is defined as 0 at 0, so identical rows give finite gradients.
        return torch.linalg.vector_norm(diff, dim=1).mean()
    if form == "paper":
        return torch.linalg.vector_norm(diff) / a.shape[0]
    raise ValueError(f"norm_form must be 'released' or 'paper', got {form!r}")


def _half_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1, eps=1e-6) @ F.normalize(b, dim=1, eps=1e-6).T / 2.0


def _logistic_nll(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    # softplus(x) == log(1 + e^x) without overflow for large x.
    return (F.softplus(x) - s * x).mean()


def j1_label_space(pred_img, pred_txt, labels, form: str = "released") -> torch.Tensor:
    """J1: distance of both modalities' classifier outputs to the label vectors."""
    y = labels.to(pred_img.dtype)
    return _distance(pred_img, y, form) + _distance(pred_txt, y, form)


def j2_common_space(u, v, labels, columns: tuple | None = None) -> torch.Tensor:
    """J2: logistic negative log-likelihood of relevance over image-text, image-image and text-text pairs.

    `columns` = (u_all, v_all, labels_all) compares this batch's rows against a wider set (the global batch
    gathered across processes); the default compares the batch with itself.
    """
    u_cols, v_cols, labels_cols = columns if columns is not None else (u, v, labels)
    s = relevance(labels, labels_cols).to(u.dtype)
    return (_logistic_nll(_half_cosine(u, v_cols), s) + _logistic_nll(_half_cosine(u, u_cols), s)
            + _logistic_nll(_half_cosine(v, v_cols), s))


def j3_modality_invariance(u, v, form: str = "released") -> torch.Tensor:
    """J3: distance between the paired image and text representations."""
    return _distance(u, v, form)


def dscmr_loss(u, v, pred_img, pred_txt, labels, cfg: LossConfig, j2_columns: tuple | None = None) -> LossTerms:
    """Compute J and its parts. `j2_columns` = (u_all, v_all, labels_all) widens J2's pairs (see `j2_common_space`)."""
    zero = u.new_zeros(())
    j1 = j1_label_space(pred_img, pred_txt, labels, cfg.norm_form) if cfg.use_j1 else zero
    if cfg.use_j2:
        j2 = j2_common_space(u, v, labels, j2_columns)
    else:
        j2 = zero
    j3 = j3_modality_invariance(u, v, cfg.norm_form) if cfg.use_j3 else zero
    total = j1 + cfg.lambda_j2 * j2 + cfg.eta_j3 * j3
    return LossTerms(total=total, j1=j1, j2=j2, j3=j3)


@torch.no_grad()
def ridge_classifier(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, ridge: float) -> torch.Tensor:
    """Classifier weight (c x d) minimising ||P^T U - Y||^2 + ||P^T V - Y||^2 + ridge*||P||^2.

    Algorithm 1 writes P = (UU^T)^-1 U Y^T + (VV^T)^-1 V Y^T, which is singular for a batch of 100
    in 1024-d and, as a sum of two separate fits, predicts about 2Y; we solve the joint ridge problem
    instead, in its n x n (Woodbury) form since the batch is smaller than the dimension.
    """
    z = torch.cat([u, v]).double()
    y = torch.cat([labels, labels]).double()
    gram = z @ z.T + ridge * torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
    weight = z.T @ torch.linalg.solve(gram, y)  # d x c
    return weight.T.to(u.dtype)
