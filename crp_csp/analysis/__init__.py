"""The one analysis pass: CRP relevance, reference samples, unit statistics and encoder embeddings."""
from .config import AnalysisConfig
from .crops import conditional_heatmaps, relevance_crop
from .distributed import ProcessGroup, current_process_group, rank_device
from .recording import find_layers, record_layers
from .runner import run_analysis
from .statistics import merge_top, unit_values

__all__ = ["AnalysisConfig", "ProcessGroup", "conditional_heatmaps", "current_process_group", "find_layers",
           "merge_top", "rank_device", "record_layers", "relevance_crop", "run_analysis", "unit_values"]
from .feature_visualization import CSPFeatureVisualization, write_crp_results  # noqa: E402

__all__ += ["CSPFeatureVisualization", "write_crp_results"]
