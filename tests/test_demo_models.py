"""The shipped demo models reach their targets on held-out renders, and run under zennit and CRP."""
import pytest
import torch
from crp.attribution import CondAttribution
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

from crp_csp.demo import DemoWorldDataset, load_demo_classifier, load_demo_clip
from crp_csp.demo.evaluate import classifier_accuracy, zero_shot_accuracy


@pytest.fixture(scope="module")
def classifier():
    return load_demo_classifier()


def test_classifier_heldout_accuracy(classifier):
    assert classifier_accuracy(classifier, size=2000) >= 0.95


def test_clip_zero_shot_per_family():
    accuracy = zero_shot_accuracy(load_demo_clip(), size=1000)
    assert all(value >= 0.90 for value in accuracy.values()), accuracy


def test_crp_conditional_attribution_on_demo_classifier(classifier):
    dataset = DemoWorldDataset("heldout", size=8)
    images = torch.stack([dataset[i][0] for i in range(8)])
    labels = [dataset[i][1] for i in range(8)]
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    attribution = CondAttribution(classifier)

    data = images.clone().requires_grad_(True)
    result = attribution(data, [{"y": [t]} for t in labels], composite, record_layer=["features.conv4"])
    assert result.heatmap.shape == (8, 64, 64)
    # CRP's heatmap equals zennit's own attributor with the same composite
    with Gradient(model=classifier, composite=composite) as attributor:
        one_hot = torch.eye(16)[labels]
        output, relevance = attributor(images.clone().requires_grad_(True), lambda out: out * one_hot)
    torch.testing.assert_close(result.heatmap, relevance.sum(1), rtol=1e-4, atol=1e-6)

    # conditional heatmaps of all conv4 channels add up to the unconditional one
    assert result.relevances["features.conv4"].shape == (8, 64, 8, 8)
    conditions = [{"features.conv4": [c], "y": [labels[0]]} for c in range(64)]
    per_channel = attribution(images[:1].clone().requires_grad_(True), conditions, composite).heatmap
    torch.testing.assert_close(per_channel.sum(0), result.heatmap[0], rtol=1e-3, atol=1e-5)
    # the model is left without hooks
    assert all(not m._forward_hooks for m in classifier.modules())
