"""Faithfulness metrics of a unit's label: CoSy AUC and MAD, simulation correlation, AUPRC.

Every function takes plain arrays and works on one unit (1-D arrays) or on many units at once
(2-D arrays, one column per unit). Undefined values (a constant unit, no positive sample) are NaN,
never an exception, so a dead unit does not stop the evaluation of a layer.
"""
from __future__ import annotations

import numpy as np


def _columns(values, name: str) -> tuple[np.ndarray, bool]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise ValueError(f"{name} must be [N] or [N, units], got shape {array.shape}")
    return (array[:, None], True) if array.ndim == 1 else (array, False)


def _unwrap(result: np.ndarray, single: bool):
    return float(result[0]) if single else result


def cosy(concept_acts, control_acts) -> tuple[float | np.ndarray, float | np.ndarray]:
    """CoSy scores of a label: how well its concept images drive the unit compared with control images.

    Parameters
    ----------
    concept_acts : [M] or [M, units], the unit's activation on M images of the label's concept.
    control_acts : [K] or [K, units], its activation on K control images.

    Returns
    -------
    (auc, mad)
        ``auc`` = P(activation on a concept image > activation on a control image), ties counted 1/2
        (the ROC AUC of concept vs control); ``mad`` = (mean_concept - mean_control) / std_control
        (population std; NaN when the control activations are constant). Floats for 1-D input,
        arrays [units] for 2-D input.
    """
    concept, single = _columns(concept_acts, "concept_acts")
    control, single_control = _columns(control_acts, "control_acts")
    if single != single_control or concept.shape[1] != control.shape[1]:
        raise ValueError(f"concept_acts {np.shape(concept_acts)} and control_acts {np.shape(control_acts)} "
                         "must both be 1-D or have the same number of units")
    if len(concept) == 0 or len(control) == 0:
        raise ValueError("cosy needs at least one concept and one control activation")
    auc = np.empty(concept.shape[1])
    for unit in range(concept.shape[1]):
        ordered = np.sort(control[:, unit])
        below = np.searchsorted(ordered, concept[:, unit], side="left")
        below_or_equal = np.searchsorted(ordered, concept[:, unit], side="right")
        auc[unit] = (below + 0.5 * (below_or_equal - below)).mean() / len(ordered)
    spread = control.std(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mad = np.where(spread > 0, (concept.mean(0) - control.mean(0)) / np.where(spread > 0, spread, 1.0), np.nan)
    return _unwrap(auc, single), _unwrap(mad, single)


def simulation_correlation(unit_acts, predictor) -> float | np.ndarray:
    """Pearson correlation between a unit's activations and the predicted presence of its label.

    Parameters
    ----------
    unit_acts : [N] or [N, units], activations on N held-out images.
    predictor : same shape, or [N] shared by all units: e.g. the encoder's image-text similarity of
        the label, or the ground-truth presence (0/1) of the label.

    Returns
    -------
    float or np.ndarray
        Pearson r per unit, NaN where either side is constant.
    """
    acts, single = _columns(unit_acts, "unit_acts")
    predicted = np.asarray(predictor, dtype=np.float64)
    predicted = predicted[:, None] if predicted.ndim == 1 else predicted
    if predicted.shape[0] != acts.shape[0] or predicted.shape[1] not in (1, acts.shape[1]):
        raise ValueError(f"predictor {np.shape(predictor)} does not match unit_acts {np.shape(unit_acts)}")
    acts = acts - acts.mean(0)
    predicted = predicted - predicted.mean(0)
    numerator = (acts * predicted).sum(0)
    denominator = np.sqrt((acts**2).sum(0) * (predicted**2).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)
    return _unwrap(np.clip(r, -1.0, 1.0), single)


def auprc(presence, acts) -> float | np.ndarray:
    """Average precision of a unit's activations as a detector of its label's ground-truth presence.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct activation values taken as thresholds, from the
    highest down (tied activations form one threshold), as ``sklearn.metrics.average_precision_score``
    defines it. Chance level is the share of positives.

    Parameters
    ----------
    presence : bool [N] (or [N, units]), does image n show the label?
    acts : [N] or [N, units], the unit's activations on the same images.

    Returns
    -------
    float or np.ndarray
        AP per unit; NaN where no image shows the label.
    """
    scores, single = _columns(acts, "acts")
    truth = np.asarray(presence).astype(bool)
    truth = truth[:, None] if truth.ndim == 1 else truth
    if truth.shape[0] != scores.shape[0] or truth.shape[1] not in (1, scores.shape[1]):
        raise ValueError(f"presence {np.shape(presence)} does not match acts {np.shape(acts)}")
    truth = np.broadcast_to(truth, scores.shape)
    result = np.full(scores.shape[1], np.nan)
    for unit in range(scores.shape[1]):
        positives = truth[:, unit].sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, unit], kind="stable")
        ranked, hits = scores[order, unit], truth[order, unit]
        # the last position of each run of tied scores is a threshold
        last = np.r_[np.nonzero(np.diff(ranked))[0], len(ranked) - 1]
        true_pos = np.cumsum(hits)[last]
        precision = true_pos / (last + 1)
        recall = true_pos / positives
        result[unit] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return _unwrap(result, single)
