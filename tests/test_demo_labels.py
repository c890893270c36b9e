"""Label quality on the demo world with the shipped models: the final layer against the class names."""
import pytest
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

import crp_csp
from crp_csp.demo import CLASS_NAMES, DemoWorldDataset, load_demo_classifier


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return crp_csp.run_analysis(
        load_demo_classifier(), DemoWorldDataset("probe", size=1200), crp_csp.load_encoder("demo"), ["fc"],
        tmp_path_factory.mktemp("demo_labels") / "store.h5",
        composite=EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]),
        config=crp_csp.AnalysisConfig(batch_size=100, crop_count=0), progress=False,
    )


@pytest.mark.parametrize("positives", ["activation", "relevance"])
def test_final_layer_csp_names_the_classes(store, positives):
    labels = crp_csp.label_units(store, "fc", list(CLASS_NAMES), scorer=crp_csp.CSPScorer(gamma=1.0),
                                 selection_config=crp_csp.SelectionConfig(positives=positives, eligibility=positives))
    top1 = sum(label == name for label, name in zip(labels.top1(), CLASS_NAMES)) / len(CLASS_NAMES)
    assert top1 >= 0.9, list(zip(labels.top1(), CLASS_NAMES))
