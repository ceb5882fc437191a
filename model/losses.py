"""The DSCMR objective J = J1 + lambda*J2 + eta*J3 (+ an optional instance term) and the ridge closed form of the classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from model.config import LossConfig


@dataclass
class LossTerms:
    """The total objective and its (unweighted) parts, as tensors; `inst` is the instance term (0 when off)."""

    total: torch.Tensor
    j1: torch.Tensor
    j2: torch.Tensor
    j3: torch.Tensor
    inst: torch.Tensor


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
    return (
        _logistic_nll(_half_cosine(u, v_cols), s)
        + _logistic_nll(_half_cosine(u, u_cols), s)
        + _logistic_nll(_half_cosine(v, v_cols), s)
    )


def j1_labelled_rows(pred_img, pred_txt, labels, form: str = "released") -> torch.Tensor:
    """J1 over the rows that have a label (a corpus where only some items are labelled); 0 when none has."""
    y = labels.to(pred_img.dtype)
    known = (labels.sum(1) > 0).to(pred_img.dtype)
    count = known.sum().clamp_min(1.0)

    def distance(pred: torch.Tensor) -> torch.Tensor:
        diff = (pred - y) * known[:, None]
        if form == "released":
            return torch.linalg.vector_norm(diff, dim=1).sum() / count
        if form == "paper":
            return torch.linalg.vector_norm(diff) / count
        raise ValueError(f"norm_form must be 'released' or 'paper', got {form!r}")

    return distance(pred_img) + distance(pred_txt)


def j2_labelled_pairs(u, v, labels, columns: tuple | None = None) -> torch.Tensor:
    """J2 over the pairs (i, j) where both items have a label (a corpus where only some items are labelled): the mean
    of the same logistic terms over those pairs only; 0 when there are none."""
    u_cols, v_cols, labels_cols = columns if columns is not None else (u, v, labels)
    s = relevance(labels, labels_cols).to(u.dtype)
    weight = (labels.sum(1) > 0).to(u.dtype)[:, None] * (labels_cols.sum(1) > 0).to(u.dtype)[None, :]
    count = weight.sum().clamp_min(1.0)

    def nll(x: torch.Tensor) -> torch.Tensor:
        return ((F.softplus(x) - s * x) * weight).sum() / count

    return nll(_half_cosine(u, v_cols)) + nll(_half_cosine(u, u_cols)) + nll(_half_cosine(v, v_cols))


def j3_modality_invariance(u, v, form: str = "released") -> torch.Tensor:
    """J3: distance between the paired image and text representations."""
    return _distance(u, v, form)


def instance_term(u, v, instance_ids, temperature: float, form: str = "infonce", columns: tuple | None = None) -> torch.Tensor:
    """Instance term: each image nearer its own text than the batch's other texts, and each text nearer its own image.

    `instance_ids[i]` names the instance of pair i: pairs with equal ids (several photos sharing one caption) are all
    positives of each other, never negatives. `columns` = (u_all, v_all, ids_all) compares this batch's rows against a
    wider set (the global batch under torchrun), like J2.
    - "infonce": symmetric InfoNCE, -log(sum of exp(cos/T) over the positives / sum over all columns), averaged over the
      image->text and text->image rows.
    - "pair_likelihood": J2's logistic likelihood with "same instance" as the relation, logits cos/(2T) over
      image-text pairs (T = 0.5 is J2's own scale).
    """
    u_cols, v_cols, ids_cols = columns if columns is not None else (u, v, instance_ids)
    positive = instance_ids[:, None] == ids_cols[None, :]
    u_unit, v_unit = F.normalize(u, dim=1, eps=1e-6), F.normalize(v, dim=1, eps=1e-6)
    i2t = u_unit @ F.normalize(v_cols, dim=1, eps=1e-6).T
    if form == "pair_likelihood":
        return _logistic_nll(i2t / (2.0 * temperature), positive.to(i2t.dtype))
    if form != "infonce":
        raise ValueError(f"instance_form must be 'infonce' or 'pair_likelihood', got {form!r}")
    t2i = v_unit @ F.normalize(u_cols, dim=1, eps=1e-6).T

    def nll(similarity: torch.Tensor) -> torch.Tensor:
        logits = similarity / temperature
        return (torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)).mean()

    return (nll(i2t) + nll(t2i)) / 2.0


def dscmr_loss(
    u,
    v,
    pred_img,
    pred_txt,
    labels,
    cfg: LossConfig,
    j2_columns: tuple | None = None,
    instance_ids: torch.Tensor | None = None,
    instance_columns: tuple | None = None,
    partial_labels: bool = False,
) -> LossTerms:
    """Compute J and its parts. `j2_columns` = (u_all, v_all, labels_all) widens J2's pairs (see `j2_common_space`);
    `instance_ids` (default: every pair its own instance) and `instance_columns` feed the instance term (`instance_term`).
    `partial_labels`: some rows have no label (all-zero label rows); J1 and J2 then count only the labelled rows / pairs."""
    zero = u.new_zeros(())
    if not cfg.use_j1:
        j1 = zero
    elif partial_labels:
        j1 = j1_labelled_rows(pred_img, pred_txt, labels, cfg.norm_form)
    else:
        j1 = j1_label_space(pred_img, pred_txt, labels, cfg.norm_form)
    if not cfg.use_j2:
        j2 = zero
    elif partial_labels:
        j2 = j2_labelled_pairs(u, v, labels, j2_columns)
    else:
        j2 = j2_common_space(u, v, labels, j2_columns)
    j3 = j3_modality_invariance(u, v, cfg.norm_form) if cfg.use_j3 else zero
    inst = zero
    if cfg.instance_weight > 0:
        ids = instance_ids if instance_ids is not None else torch.arange(len(u), device=u.device)
        inst = instance_term(u, v, ids, cfg.instance_temperature, cfg.instance_form, instance_columns)
    total = j1 + cfg.lambda_j2 * j2 + cfg.eta_j3 * j3 + cfg.instance_weight * inst
    return LossTerms(total=total, j1=j1, j2=j2, j3=j3, inst=inst)


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
