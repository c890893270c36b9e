"""Vision transformer units: token aggregation, MLP neurons and SAE latents of small random-weight ViTs."""
import logging

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torchvision.models import VisionTransformer
from zennit.composites import EpsilonPlusFlat

from analysis_job import make_encoder, small_config
from crp_csp.analysis import record_layers, run_analysis, unit_values
from crp_csp.contrastive import SelectionConfig, select_contrastive
from crp_csp.demo import DemoWorldDataset
from crp_csp.scoring import label_units
from crp_csp.units import SAEConfig, TokenConcept, fit_sae, insert_sae, latents_name, layer_rows

BLOCK = "encoder.layers.encoder_layer_1"
# MLP neurons (GELU outputs); block 1's modules move under ".layer" once an SAE follows the block
NEURONS = {"encoder.layers.encoder_layer_0.mlp.1": "cls", f"{BLOCK}.layer.mlp.1": "max"}
LATENTS = latents_name(BLOCK)
SAMPLES = 48


def make_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=16).eval()


def test_token_concept_reduces_tokens_as_its_aggregation_says():
    tokens = torch.randn(3, 5, 4)  # [B, T, C], token 0 is the CLS token
    for aggregation, expected in (("cls", tokens[:, 0]), ("mean", tokens[:, 1:].mean(1)),
                                  ("max", tokens[:, 1:].amax(1))):
        concept = TokenConcept(aggregation)
        value, rf = unit_values(concept.channel_first(tokens), concept.reduction, abs_norm=False)
        np.testing.assert_allclose(value, expected, rtol=1e-6)
    _, rf = unit_values(TokenConcept("max").channel_first(tokens), "max", abs_norm=False)
    np.testing.assert_array_equal(rf, tokens[:, 1:].argmax(1))  # a patch index
    no_cls = TokenConcept("mean", prefix_tokens=0)
    np.testing.assert_allclose(unit_values(no_cls.channel_first(tokens), "mean", False)[0], tokens.mean(1), rtol=1e-6)
    with pytest.raises(ValueError, match="aggregation"):
        TokenConcept("median")
    with pytest.raises(ValueError, match="token-wise"):
        TokenConcept().channel_first(torch.randn(2, 4, 3, 3))


def test_crops_are_refused_for_token_units(tmp_path):
    with pytest.raises(ValueError, match="crop_count=0"):
        run_analysis(make_vit(), DemoWorldDataset("probe", size=8), make_encoder(), {BLOCK: TokenConcept()},
                     tmp_path / "store.h5", config=small_config(), progress=False)


def test_torchvision_vit_neurons_and_sae_latents_in_one_pass(tmp_path, caplog):
    vit = make_vit()
    dataset = DemoWorldDataset("probe", size=SAMPLES)
    images = torch.stack([dataset[i][0] for i in range(SAMPLES)])
    rows = layer_rows(vit, BLOCK, images)
    assert rows.shape == (SAMPLES * 17, 32)  # 16 patches + CLS per image, residual width 32
    sae, _ = fit_sae(rows, SAEConfig(nb_concepts=24, top_k=4, epochs=2, batch_size=256))
    model = insert_sae(vit, BLOCK, sae)
    with torch.no_grad():
        np.testing.assert_allclose(model(images), vit(images), atol=1e-5)

    layer_map = {name: TokenConcept(aggregation) for name, aggregation in NEURONS.items()}
    layer_map[LATENTS] = TokenConcept("mean")
    encoder = make_encoder()
    with caplog.at_level(logging.WARNING, logger="crp_csp"):
        # no composite: zennit 0.4.6 counts nn.MultiheadAttention as an activation and its Pass rule then
        # fails on the three inputs; the relevances of token units are gradients either way
        store = run_analysis(model, dataset, encoder, layer_map, tmp_path / "store.h5",
                             config=small_config(crop_count=0, pool_size=16), progress=False)
    assert "no LRP rules for attention" in caplog.text
    assert store.fingerprint["layers"][LATENTS] == repr(TokenConcept("mean"))
    assert "references='activation'" in store.fingerprint["layers"][LATENTS]

    with torch.no_grad(), record_layers(model, list(layer_map)) as recording:
        model(images[:16])
    naive = {name: recording.activations[name] for name in layer_map}  # [B, T, C]
    expected = {
        "encoder.layers.encoder_layer_0.mlp.1": naive["encoder.layers.encoder_layer_0.mlp.1"][:, 0],
        f"{BLOCK}.layer.mlp.1": naive[f"{BLOCK}.layer.mlp.1"][:, 1:].amax(1),
        LATENTS: naive[LATENTS][:, 1:].mean(1),
    }
    for name, values in expected.items():
        assert store.statistic(name, "activation", "value").shape == (SAMPLES, values.shape[1])
        normalised = values / (values.abs().sum(1, keepdim=True) + 1e-10)
        np.testing.assert_allclose(store.statistic(name, "activation", "value", rows=slice(0, 16)), normalised,
                                   rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(store.statistic(LATENTS, "activation", "max", rows=slice(0, 16)),
                               naive[LATENTS][:, 1:].amax(1), rtol=1e-5, atol=1e-6)

    selection = select_contrastive(store, LATENTS, SelectionConfig(scored_count=5))
    labels = label_units(store, LATENTS, ["red", "circle", "striped"], encoder=encoder, selection=selection, top_k=1)
    assert len(labels.units) == 24


def test_timm_vit_mlp_neurons(tmp_path):
    """timm's attention has no module that zennit mistakes for an activation, so a composite runs."""
    torch.manual_seed(0)
    vit = TimmViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=16).eval()
    layer = "blocks.1.mlp.act"
    concept = TokenConcept("mean", prefix_tokens=vit.num_prefix_tokens)
    dataset = DemoWorldDataset("probe", size=32)
    store = run_analysis(vit, dataset, make_encoder(), {layer: concept}, tmp_path / "store.h5",
                         composite=EpsilonPlusFlat(), config=small_config(crop_count=0, pool_size=8), progress=False)
    images = torch.stack([dataset[i][0] for i in range(8)])
    with torch.no_grad(), record_layers(vit, [layer]) as recording:
        vit(images)
    np.testing.assert_allclose(store.statistic(layer, "activation", "mean", rows=slice(0, 8)),
                               recording.activations[layer][:, 1:].mean(1), rtol=1e-5, atol=1e-6)
    assert store.references(layer, "activation")["ids"].shape == (8, 64)
