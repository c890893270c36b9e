"""A self-contained HTML report of labelled units: overview tables (sortable, filterable), each
unit's positives with CRP heatmaps, its contrastive negatives, label rankings under CSP and
SemanticLens, interpretability scores and faithfulness metrics.

>>> write_report(store, {"features.conv4": [csp, lens]}, "report.html",
...              model=model, dataset=dataset, composite=composite)   # doctest: +SKIP
"""
from .content import FAITHFULNESS, LayerContent, UnitRow, evaluation_summary, evaluation_units, layer_content
from .html import esc
from .writer import DEFAULT_EXAMPLES, group_labels, write_report

__all__ = ["DEFAULT_EXAMPLES", "FAITHFULNESS", "LayerContent", "UnitRow", "esc", "evaluation_summary",
           "evaluation_units", "group_labels", "layer_content", "write_report"]
