"""The one analysis pass: agreement with zennit-crp, correct relevances, resume, integrity, errors."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.visualization import FeatureVisualization

from analysis_job import LAYERS, make_composite, make_encoder, make_model, run, small_config
from crp_csp.analysis import AnalysisConfig, CSPFeatureVisualization, run_analysis
from crp_csp.demo import DemoWorldDataset
from crp_csp.store import AnalysisStore, StoreLockedError, StoreMismatchError, WriterLock

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def store_and_crp(tmp_path_factory):
    """The same 160 samples through zennit-crp's FeatureVisualization.run and through crp-csp."""
    root = tmp_path_factory.mktemp("analysis")
    dataset = DemoWorldDataset("probe", size=160)
    model = make_model()
    layer_map = {name: ChannelConcept() for name in LAYERS}
    fv = FeatureVisualization(CondAttribution(model), dataset, layer_map, path=str(root / "crp"))
    fv.run(make_composite(), 0, len(dataset), batch_size=32)
    store = run(root / "store.h5", 160)
    return store, fv, model, dataset


def _assert_same_ranking(ours_ids, ours_values, crp_ids, crp_values):
    np.testing.assert_allclose(ours_values, crp_values, rtol=1e-4, atol=1e-6)
    # sample ids must agree wherever the value is not tied with a neighbour
    for column in range(ours_values.shape[1]):
        values = crp_values[:, column]
        gaps = np.abs(np.diff(values))
        untied = np.ones(len(values), bool)
        untied[:-1] &= gaps > 1e-5
        untied[1:] &= gaps > 1e-5
        np.testing.assert_array_equal(ours_ids[untied, column], crp_ids[untied, column])


def test_first_40_references_equal_zennit_crp(store_and_crp):
    store, fv, _, _ = store_and_crp
    for layer in LAYERS:
        for mode, folder in (("activation", fv.ActMax.PATH), ("relevance", fv.RelMax.PATH)):
            ours = store.references(layer, mode)
            crp_ids = np.load(folder / f"{layer}_data.npy")
            crp_values = np.load(folder / f"{layer}_rel.npy")
            assert crp_ids.shape[0] == 40 and ours["ids"].shape[0] == 50
            _assert_same_ranking(ours["ids"][:40], ours["values"][:40], crp_ids, crp_values)


def test_relevance_matches_a_hand_computed_lrp_epsilon(store_and_crp):
    """Relevance at features.conv4 recomputed by hand: epsilon rule on fc, proportional average pool."""
    store, _, model, dataset = store_and_crp
    images = torch.stack([dataset[i][0] for i in range(16)])
    labels = torch.tensor([dataset[i][1] for i in range(16)])
    with torch.no_grad():
        pre = model.features[: list(model.features._modules).index("relu4")](images)  # conv4 + bn4 (merged)
        activated = pre.clamp(min=0)
        pooled = activated.mean((2, 3))
        logits = pooled @ model.fc.weight.T + model.fc.bias
        start = torch.zeros_like(logits)
        start[torch.arange(16), labels] = logits[torch.arange(16), labels]
        stabilised = logits + 1e-6 * torch.where(logits >= 0, 1.0, -1.0)
        relevance_pooled = pooled * ((start / stabilised) @ model.fc.weight)
        pooled_stab = pooled + 1e-6 * torch.where(pooled >= 0, 1.0, -1.0)
        relevance = activated * (relevance_pooled / pooled_stab)[..., None, None] / (pre.shape[2] * pre.shape[3])
    expected_sum = relevance.sum((2, 3)).numpy()
    ours = store.statistic("features.conv4", "relevance", "sum", rows=slice(0, 16))
    np.testing.assert_allclose(ours, expected_sum, rtol=1e-3, atol=1e-5)
    expected_value = expected_sum / (np.abs(expected_sum).sum(1, keepdims=True) + 1e-10)
    np.testing.assert_allclose(store.statistic("features.conv4", "relevance", "value", rows=slice(0, 16)),
                               expected_value, rtol=1e-3, atol=1e-5)


def test_store_holds_full_matrices_embeddings_and_crops(store_and_crp):
    store, _, _, dataset = store_and_crp
    assert store.num_samples == 160 and store.layers == LAYERS
    assert store.statistic("features.conv4", "activation", "max").shape == (160, 64)
    assert store.statistic("fc", "relevance", "sum").shape == (160, 16)
    embeddings = store.embeddings()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-4)
    encoder = make_encoder()
    direct = encoder.encode_images(torch.stack([dataset[i][0] for i in range(4)])).numpy()
    np.testing.assert_allclose(embeddings[:4], direct, atol=1e-5)
    crops = store.crop_embeddings("features.conv4", "relevance")
    assert crops.shape == (2, 64, encoder.embed_dim)
    # a crop is a different view than the whole image
    ids = store.references("features.conv4", "relevance")["ids"]
    assert not np.allclose(crops[0, 0], embeddings[ids[0, 0]], atol=1e-3)
    with h5py.File(store.path) as handle:
        fingerprint = handle.attrs["fingerprint"]
    for key in ("model", "dataset", "composite", "layers", "encoder"):
        assert key in fingerprint
    np.testing.assert_array_equal(store.targets(), dataset.labels())
    assert not Path(f"{store.path}.parts").exists()


def test_killed_run_resumes_to_identical_store(tmp_path):
    reference = run(tmp_path / "reference.h5", 256)
    killed = tmp_path / "killed.h5"
    process = subprocess.Popen([sys.executable, str(HERE / "analysis_job.py"), str(killed), "256"],
                               cwd=HERE)
    parts = Path(f"{killed}.parts")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part_*.npz"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not killed.exists(), "the run finished before it was killed; kill it sooner"
    assert len(list(parts.glob("part_*.npz"))) >= 2
    resumed = run(killed, 256)
    with h5py.File(reference.path) as a, h5py.File(resumed.path) as b:
        names = []
        a.visit(lambda name: names.append(name) if isinstance(a[name], h5py.Dataset) else None)
        for name in names:
            np.testing.assert_allclose(a[name][()], b[name][()], rtol=1e-6, atol=1e-7, err_msg=name)
        assert dict(a.attrs)["fingerprint"] == dict(b.attrs)["fingerprint"]


def test_reuse_mismatch_overwrite_and_lock(tmp_path, store_and_crp):
    path = tmp_path / "s.h5"
    first = run(path, 48)
    mtime = path.stat().st_mtime_ns
    assert run(path, 48).fingerprint == first.fingerprint and path.stat().st_mtime_ns == mtime
    with pytest.raises(StoreMismatchError, match="dataset"):
        run(path, 64)
    with pytest.raises(StoreMismatchError, match="options.max_target"):
        run(path, 48, max_target="max")
    assert AnalysisStore(path).num_samples == 48  # untouched
    with WriterLock(path):
        with pytest.raises(StoreLockedError, match="being written"):
            run(path, 48)
    dataset = DemoWorldDataset("probe", size=64)
    store = run_analysis(make_model(), dataset, make_encoder(), LAYERS, path, composite=make_composite(),
                         config=small_config(), overwrite=True, progress=False)
    assert store.num_samples == 64


def test_corrupted_store_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(Exception, match="not a readable HDF5 store"):
        run(path, 16)


class _Broken(torch.utils.data.Dataset):
    def __init__(self, kind):
        self.kind = kind

    def __len__(self):
        return 0 if self.kind == "empty" else 8

    def __getitem__(self, index):
        image = DemoWorldDataset("probe", size=8)[index][0]
        if self.kind == "flat":
            return image.flatten(), 0
        if self.kind == "mixed" and index == 3:
            return image[:, :32, :32], 0
        if self.kind == "nan" and index == 2:
            image = image.clone()
            image[0, 0, 0] = float("nan")
        return image, 0


@pytest.mark.parametrize("kind, message", [
    ("empty", "dataset is empty"), ("flat", "must be images"), ("mixed", "different shapes"),
    ("nan", "non-finite"),
])
def test_bad_inputs_are_clear_errors(tmp_path, kind, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        run_analysis(make_model(), _Broken(kind), make_encoder(), LAYERS, tmp_path / "x.h5",
                     composite=make_composite(), config=small_config(), progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_unknown_layer_and_hooks_are_removed(tmp_path):
    model = make_model()
    with pytest.raises(KeyError, match="Did you mean features.conv4"):
        run_analysis(model, DemoWorldDataset("probe", size=8), make_encoder(), ["features.conv44"],
                     tmp_path / "x.h5", config=small_config(), progress=False)
    with pytest.raises(ValueError):
        run_analysis(model, _Broken("nan"), make_encoder(), LAYERS, tmp_path / "y.h5",
                     composite=make_composite(), config=small_config(), progress=False)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_prediction_target_and_config_validation(tmp_path):
    store = run(tmp_path / "p.h5", 32, relevance_target="prediction", crop_count=0)
    assert store.config["relevance_target"] == "prediction"
    with pytest.raises(ValueError, match="relevance_target"):
        AnalysisConfig(relevance_target="truth")
    with pytest.raises(ValueError, match="crop_count"):
        AnalysisConfig(pool_size=10, crop_count=20)


def test_feature_visualization_drop_in(tmp_path):
    dataset = DemoWorldDataset("probe", size=96)
    model = make_model()
    attribution = CondAttribution(model)
    layer_map = {name: ChannelConcept() for name in LAYERS}
    fv = CSPFeatureVisualization(attribution, dataset, layer_map, path=str(tmp_path / "fv"),
                                 encoder=make_encoder(), config=small_config())
    fv.run(make_composite(), 0, len(dataset), batch_size=16)
    refs = fv.get_max_reference([0, 5], "features.conv4", "relevance", (0, 4), composite=make_composite(),
                                rf=True, plot_fn=None)
    assert set(refs) == {0, 5} and len(refs[0][0]) == 4
    ids = fv.store.references("features.conv4", "relevance")["ids"]
    np.testing.assert_array_equal(np.load(fv.RelMax.PATH / "features.conv4_data.npy")[:, 0], ids[:, 0])
    targets, values = fv.compute_stats(5, "features.conv4", "relevance", top_N=3)
    assert len(targets) == 3
