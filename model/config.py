"""Typed configuration of the DSCMR network and objective (paper / released-code values as defaults)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

NormForm = Literal["released", "paper"]
ClassifierUpdate = Literal["gradient", "ridge"]
InstanceForm = Literal["infonce", "pair_likelihood"]
InputNorm = Literal["none", "l2", "standardize"]


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes and regularisation of the two branches, the shared layer and the classifier."""

    image_input_dim: int = 4096
    text_input_dim: int = 300
    hidden_dim: int = 2048
    common_dim: int = 1024
    num_classes: int = 10
    input_dropout: float = 0.0
    hidden_dropout: float = 0.0
    # Standardisation / L2 of the raw input features happens inside the network so that
    # a saved model carries its own preprocessing and serving cannot forget it.
    input_norm: InputNorm = "none"


@dataclass(frozen=True)
class LossConfig:
    """Weights and forms of J = J1 + lambda*J2 + eta*J3 (+ instance_weight * J_inst, beyond the paper; off by default)."""

    lambda_j2: float = 1e-3
    eta_j3: float = 1e-1
    use_j1: bool = True
    use_j2: bool = True
    use_j3: bool = True
    norm_form: NormForm = "released"
    classifier_update: ClassifierUpdate = "gradient"
    ridge: float = 1.0
    # The instance term asks each image to be closer to its own text than to the batch's other texts and vice versa.
    # DSCMR alone only pulls items towards their labels, so the order inside a class is arbitrary; 0 reproduces the paper.
    instance_weight: float = 0.0
    instance_temperature: float = 0.05
    instance_form: InstanceForm = "infonce"


ABLATIONS: dict[str, dict[str, bool]] = {
    "full": {},
    "no_j1": {"use_j1": False},
    "no_j2": {"use_j2": False},
    "no_j3": {"use_j3": False},
    "j1_only": {"use_j2": False, "use_j3": False},
}


def loss_for_ablation(base: LossConfig, ablation: str) -> LossConfig:
    """Return `base` with the terms switched off that the named ablation removes."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {sorted(ABLATIONS)}")
    return dataclasses.replace(base, **ABLATIONS[ablation])


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass (possibly nested) to a JSON-ready dict."""
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: dict[str, Any]):
    """Build dataclass `cls` (nested dataclasses too) from a dict, rejecting unknown keys clearly."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(names)}")
    # a field added after configs were saved may have a default for new configs that old ones were not trained with
    kwargs = {k: v for k, v in getattr(cls, "SAVED_BEFORE_DEFAULTS", {}).items() if k not in data}
    for key, value in data.items():
        ftype = hints[key]
        if dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            value = from_dict(ftype, value)
        elif isinstance(value, list):
            value = tuple(value) if typing.get_origin(ftype) is tuple else value
        kwargs[key] = value
    return cls(**kwargs)
