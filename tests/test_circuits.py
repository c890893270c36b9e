"""Circuits on the demo world: labels of a class's circuit, CRP conservation along its edges, JSON, picture, CLI."""
import json

import numpy as np
import pytest
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

import crp_csp
from crp_csp.analysis import AnalysisConfig
from crp_csp.candidates import load_candidates
from crp_csp.circuits import Circuit, build_circuit, parse_node, saved_labels
from crp_csp.cli import SETTINGS_NAME, STORE_NAME, main
from crp_csp.demo import CLASS_NAMES, DemoWorldDataset, load_demo_classifier
from crp_csp.encoders import load_encoder
from crp_csp.scoring import label_units

SAMPLES = 600
LAYERS = ["features.conv4", "fc"]  # circuits need only the root layer in the store (and labels)


def composite():
    return EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The demo classifier with its shipped weights, a 600-sample store, conv4 labelled with CSP."""
    out = tmp_path_factory.mktemp("circuits")
    model, dataset = load_demo_classifier(), DemoWorldDataset("probe", size=SAMPLES)
    store = crp_csp.run_analysis(model, dataset, load_encoder("demo"), LAYERS, out / STORE_NAME,
                                 composite=composite(), config=AnalysisConfig(crop_count=0, batch_size=100),
                                 progress=False)
    label_units(store, "features.conv4", load_candidates(["demo"])).save(store)
    (out / SETTINGS_NAME).write_text(json.dumps({"model": "demo", "dataset": "demo", "samples": SAMPLES,
                                                 "layers": ",".join(LAYERS), "encoder": "demo"}))
    return out, model, dataset, store


def merged_bias(model, layer):
    """The bias of ``layer`` after merging its BatchNorm, as the composite sees it."""
    handles = SequentialMergeBatchNorm().apply(model)
    try:
        return dict(model.named_modules())[layer].bias.detach().clone()
    finally:
        for handle in handles:
            handle.remove()


def test_parse_node():
    assert parse_node("features.conv4:12") == ("features.conv4", 12)
    for bad in ("fc", "fc:", ":3", "fc:x"):
        with pytest.raises(ValueError):
            parse_node(bad)


@pytest.mark.parametrize("name", ["striped square", "dotted triangle"])
def test_class_circuit_names_the_class_attributes(world, name):
    """The strongest conv4 units of a class's circuit carry labels naming its pattern or its shape."""
    _, model, dataset, store = world
    target = CLASS_NAMES.index(name)
    circuit = build_circuit(model, composite(), dataset, store, root=("fc", target),
                            layers=["fc", "features.conv4"], width=3, samples=10)
    assert circuit.nodes[0].label == name  # the class name, from the dataset
    assert circuit.config["labels"]["features.conv4"].startswith("csp")
    top = [circuit.node(edge.child) for edge in circuit.children(circuit.root)]
    assert len(top) == 3 and all(node.label and node.score is not None for node in top)
    words = set(name.split())
    naming = [node.label for node in top if words & set(node.label.split())]
    assert len(naming) >= 2, [node.label for node in top]
    assert all(edge.share > 0 for edge in circuit.edges)


def test_conservation_along_edges(world):
    """Per sample: class -> conv4 shares sum to 1 - b_t / logit (the Epsilon rule's bias share); conv4 -> conv3
    shares of a parent sum to 1 where its merged bias is <= 0, to less where it is > 0 (ZPlus keeps a positive
    bias in its denominator); and the channel conditions partition conv3's relevance exactly."""
    _, model, dataset, store = world
    target = CLASS_NAMES.index("plain star")
    sample = int(store.references("fc", "relevance")["ids"][0, target])
    circuit = build_circuit(model, composite(), dataset, store, root=("fc", target),
                            layers=["features.conv4", "features.conv3"], width=None, sample_ids=[sample])
    assert len(circuit.samples) == 1
    root = circuit.nodes[0]
    with torch.no_grad():
        logit = float(model(torch.as_tensor(dataset[sample][0])[None])[0, target])
    assert root.relevance == pytest.approx(logit, rel=1e-4)  # the canonized (BN-merged) forward pass
    top = circuit.children(circuit.root)
    assert len(top) == 64
    bias = float(model.fc.bias[target].detach())
    assert sum(edge.relevance for edge in top) == pytest.approx(logit - bias, rel=1e-4)
    assert sum(edge.share for edge in top) == pytest.approx(1 - bias / logit, rel=1e-4)

    conv4_bias = merged_bias(model, "features.conv4")
    ratios = {}
    for node in circuit.nodes:
        if node.layer != "features.conv4" or abs(node.relevance) < 1e-3 * abs(root.relevance):
            continue
        edges = circuit.children(node.key)
        assert len(edges) == 64
        ratios[node.unit] = sum(edge.relevance for edge in edges) / node.relevance
        assert sum(edge.share for edge in edges) == pytest.approx(ratios[node.unit], rel=1e-6)
    assert ratios
    for unit, ratio in ratios.items():
        if conv4_bias[unit] <= 0:
            assert ratio == pytest.approx(1.0, abs=1e-4), unit
        else:
            assert 0 < ratio <= 1 + 1e-4, unit
    # exact partition: the relevance a conv3 unit gets through all conv4 channels is its relevance for the class
    for node in circuit.nodes:
        if node.layer == "features.conv3":
            through = sum(edge.relevance for edge in circuit.edges if edge.child == node.key)
            assert through == pytest.approx(node.relevance, abs=1e-5 * abs(root.relevance))


def test_inner_unit_json_and_picture(world, tmp_path):
    _, model, dataset, store = world
    labels = saved_labels(store, ["features.conv4"])
    unit = 17
    circuit = build_circuit(model, composite(), dataset, store, root=f"features.conv4:{unit}",
                            layers=["features.conv3"], width=4, samples=5, labels=labels)
    assert circuit.config["root_start"] == "activation" and circuit.nodes[0].label == labels["features.conv4"].by_unit()[unit].label
    assert len(circuit.nodes) == 5 and len(circuit.edges) == 4
    assert set(circuit.samples) <= set(store.references("features.conv4", "relevance")["ids"][:, unit].tolist())
    shares = [edge.share for edge in circuit.children(circuit.root)]
    assert shares == sorted(shares, reverse=True)
    data = json.loads(circuit.to_json(tmp_path / "c.json"))
    assert {"root", "config", "samples", "nodes", "edges"} <= set(data)
    assert Circuit.from_dict(json.loads((tmp_path / "c.json").read_text())).to_dict() == circuit.to_dict()
    circuit.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(KeyError, match="not a module"):
        build_circuit(model, composite(), dataset, store, root="fc:0", layers=["nope"])


def test_cli_circuit(world, capsys):
    out = world[0]
    assert main(["circuit", "--out", str(out), "--root", "fc:3", "--layers", "features.conv4,features.conv3",
                 "--width", "2", "--samples", "4", "--quiet"]) == 0
    data = json.loads((out / "circuits" / "fc_3.json").read_text())
    assert data["root"] == "fc:3" and data["config"]["width"] == 2 and len(data["samples"]) == 4
    assert (out / "circuits" / "fc_3.png").exists()
    assert "circuit:" in capsys.readouterr().out
    assert main(["circuit", "--out", str(out), "--root", "fc", "--layers", "features.conv4", "--quiet"]) == 2
    assert "LAYER:UNIT" in capsys.readouterr().err


def test_report_shows_circuits_of_covered_units(world, tmp_path):
    from crp_csp.report import write_report

    _, model, dataset, store = world
    inner = build_circuit(model, composite(), dataset, store, root="features.conv4:17", layers=["features.conv3"],
                          width=2, samples=3)
    outer = build_circuit(model, composite(), dataset, store, root="fc:3", layers=["features.conv4"], width=2,
                          samples=3)
    labels = list(saved_labels(store, ["features.conv4"]).values())
    path = write_report(store, labels, tmp_path / "report.html", progress=False,
                        circuits=[inner, outer])
    text = path.read_text()
    assert "circuit of features.conv4:17" in text and "circuit of fc:3" not in text  # fc is not in this report
    assert text.count('alt="circuit of') == 1
