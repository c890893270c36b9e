"""SAE latents as units: training with overcomplete, insertion, relevance decomposition, the one pass."""
import numpy as np
import pytest
import torch
from zennit.core import stabilize

from analysis_job import make_composite, make_encoder, make_model, small_config
from crp_csp.analysis import record_layers, run_analysis
from crp_csp.contrastive import SelectionConfig, select_contrastive
from crp_csp.demo import DemoWorldDataset
from crp_csp.scoring import label_units
from crp_csp.units import (
    SAEConfig, SAEInsertion, error_name, fit_sae, insert_sae, latents_name, layer_rows, load_sae, sae_quality, save_sae,
)

LAYER = "features.relu4"
LATENTS, ERROR = latents_name(LAYER), error_name(LAYER)
TINY = SAEConfig(nb_concepts=32, top_k=4, epochs=2, batch_size=256)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = make_model()
    dataset = DemoWorldDataset("probe", size=48)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor(dataset.labels())
    sae, _ = fit_sae(layer_rows(model, LAYER, images), TINY)
    return model, sae, images, labels


def test_fit_sae_kinds_on_a_planted_dictionary():
    """Both kinds recover rows built from 3 of 48 random atoms (held-out FVE) and respect their sparsity."""
    generator = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(48, 16, generator=generator), dim=1)
    choice = torch.rand(2000, 48, generator=generator).argsort(1)[:, :3]
    codes = torch.zeros(2000, 48).scatter_(1, choice, torch.rand(2000, 3, generator=generator) + 0.5)
    rows = 3 * codes @ atoms
    topk, _ = fit_sae(rows[:1500], SAEConfig(nb_concepts=64, top_k=3, epochs=8, batch_size=128, lr=1e-2))
    quality = sae_quality(topk, rows[1500:])
    assert quality["mean_active"] <= 3 and quality["fve"] > 0.5
    vanilla, _ = fit_sae(rows[:1500], SAEConfig(kind="vanilla", nb_concepts=64, epochs=8, batch_size=128, lr=1e-2))
    assert sae_quality(vanilla, rows[1500:])["fve"] > 0.5
    with pytest.raises(ValueError, match="kind"):
        SAEConfig(kind="jump")


def test_save_and_load_round_trip(setup, tmp_path):
    _, sae, images, _ = setup
    save_sae(sae, TINY, tmp_path / "sae.pt", layer=LAYER)
    loaded, config, metadata = load_sae(tmp_path / "sae.pt")
    assert config == TINY and metadata == {"layer": LAYER}
    rows = torch.randn(10, 64).abs()
    np.testing.assert_allclose(loaded(rows)[2].detach(), sae(rows)[2].detach(), atol=1e-6)


def test_insertion_leaves_outputs_unchanged(setup):
    model, sae, images, _ = setup
    inserted = insert_sae(model, LAYER, sae)
    assert isinstance(inserted.get_submodule(LAYER), SAEInsertion)
    assert not isinstance(model.get_submodule(LAYER), SAEInsertion), "the original model must stay as it was"
    with torch.no_grad(), record_layers(inserted, [LATENTS]) as recording:
        np.testing.assert_allclose(inserted(images), model(images), atol=1e-5)
    assert recording.activations[LATENTS].shape == (len(images), 32, 8, 8)
    assert ((recording.activations[LATENTS] > 0).sum(1) <= 4).all()
    with pytest.raises(ValueError, match="already"):
        insert_sae(inserted, LAYER, sae)


def test_latent_relevance_is_the_layer_relevance_minus_the_error_share(setup):
    """Under EpsilonPlusFlat: Norm on the sum, Epsilon on the decoder, recomputed by hand."""
    model, sae, images, labels = setup
    inserted = insert_sae(model, LAYER, sae)
    data = images.clone().requires_grad_(True)
    with make_composite().context(inserted) as modified, \
            record_layers(modified, [LAYER, LATENTS, ERROR]) as recording:
        output = modified(data)
        start = torch.zeros_like(output)
        start[torch.arange(len(labels)), labels] = output[torch.arange(len(labels)), labels].detach()
        output.backward(start)
    relevance = recording.relevances
    layer, latents, error = (relevance[name].flatten(1).sum(1) for name in (LAYER, LATENTS, ERROR))
    np.testing.assert_allclose(latents, layer - error, rtol=1e-3, atol=1e-6)

    coding = inserted.get_submodule(f"{LAYER}.sae")
    out = recording.activations[LAYER]
    z = recording.activations[LATENTS]
    reconstruction = coding.decode(z)
    share = relevance[LAYER] / stabilize(out, 1e-6)
    np.testing.assert_allclose(relevance[ERROR], (out - reconstruction) * share, rtol=1e-4, atol=1e-7)
    dictionary = coding.decoder.weight.T  # [K, C]
    expected = z * torch.einsum("bchw,kc->bkhw", reconstruction * share / stabilize(reconstruction, 1e-6), dictionary)
    np.testing.assert_allclose(relevance[LATENTS], expected, rtol=1e-3, atol=1e-7)


def test_error_term_is_recorded_but_has_no_crops(setup, tmp_path):
    model, sae, _, _ = setup
    inserted = insert_sae(model, LAYER, sae)
    dataset = DemoWorldDataset("probe", size=16)
    with pytest.raises(ValueError, match="crop_count=0"):
        run_analysis(inserted, dataset, make_encoder(), [ERROR], tmp_path / "crops.h5", config=small_config(),
                     progress=False)
    store = run_analysis(inserted, dataset, make_encoder(), [ERROR], tmp_path / "store.h5",
                         composite=make_composite(), config=small_config(crop_count=0), progress=False)
    assert store.statistic(ERROR, "relevance", "sum").shape == (16, 64)


def test_latents_go_through_the_one_pass_selection_and_labels(setup, tmp_path):
    model, sae, _, _ = setup
    inserted = insert_sae(model, LAYER, sae)
    dataset = DemoWorldDataset("probe", size=48)
    encoder = make_encoder()
    store = run_analysis(inserted, dataset, encoder, [LATENTS], tmp_path / "store.h5",
                         composite=make_composite(), config=small_config(pool_size=16, crop_count=1), progress=False)
    assert store.statistic(LATENTS, "activation", "max").shape == (48, 32)
    assert store.crop_embeddings(LATENTS, "relevance").shape == (1, 32, encoder.embed_dim)
    # the stored latent relevances are the ones checked against the hand computation above
    images = torch.stack([dataset[i][0] for i in range(16)])
    labels = torch.tensor(dataset.labels()[:16])
    with make_composite().context(inserted) as modified, record_layers(modified, [LATENTS]) as recording:
        output = modified(images.requires_grad_(True))
        start = torch.zeros_like(output)
        start[torch.arange(16), labels] = output[torch.arange(16), labels].detach()
        output.backward(start)
    np.testing.assert_allclose(store.statistic(LATENTS, "relevance", "sum", rows=slice(0, 16)),
                               recording.relevances[LATENTS].sum((2, 3)), rtol=1e-4, atol=1e-7)
    selection = select_contrastive(store, LATENTS, SelectionConfig(scored_count=5))
    assert selection.positive_ids.shape == (5, 32)
    labels = label_units(store, LATENTS, ["red", "circle", "striped", "sand"], encoder=encoder, selection=selection,
                         top_k=2)
    assert len(labels.units) == 32 and all(len(unit.labels) == 2 for unit in labels.units)


def test_shipped_demo_sae():
    from crp_csp.demo.models import DEMO_SAE_LATENTS, DEMO_SAE_LAYER, load_demo_classifier, load_demo_sae

    plain, with_sae = load_demo_classifier(), load_demo_classifier(sae=True)
    dataset = DemoWorldDataset("heldout", size=32)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad(), record_layers(with_sae, [DEMO_SAE_LATENTS]) as recording:
        np.testing.assert_allclose(with_sae(images), plain(images), atol=1e-4)
    assert recording.activations[DEMO_SAE_LATENTS].shape == (32, 256, 8, 8)
    quality = sae_quality(load_demo_sae(), layer_rows(plain, DEMO_SAE_LAYER, images))
    assert quality["fve"] > 0.85 and quality["mean_active"] <= 8
