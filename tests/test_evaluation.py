"""Faithfulness evaluation: metrics against hand-computed examples, concept sources, evaluate_labels end to end."""
import json

import numpy as np
import pytest
import torch

from analysis_job import LAYERS, make_composite, make_encoder, make_model, run
from crp_csp.candidates import load_candidates
from crp_csp.contrastive import SelectionConfig
from crp_csp.demo import CLASS_NAMES, DemoWorldDataset, render_phrase
from crp_csp.evaluation import (
    METRICS, DemoRendererSource, DiffusersSource, LabelEvaluator, RetrievalSource, UnknownConceptError, auprc,
    best_explaining_attribute, concept_overlap, cosy, evaluate_labels, final_layer_accuracy, is_confounded_attribute,
    names_incidental_attribute, presence_auc, same_concept, simulation_correlation, unit_activations,
)
from crp_csp.scoring import CSPScorer, LayerLabels, UnitLabel, embed_labels, label_units

PROBE_SAMPLES = 64


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return run(tmp_path_factory.mktemp("evaluation") / "store.h5", PROBE_SAMPLES, crop_count=0)


@pytest.fixture(scope="module")
def encoder():
    return make_encoder()


def _stack(dataset, count=None):
    return torch.stack([dataset[i][0] for i in range(count or len(dataset))])


# -- metrics -------------------------------------------------------------------------------------

def test_cosy_by_hand():
    # pairs (concept > control): 3>1, 3>0, 2>1, 2>0, 1=1 (1/2), 1>0 -> 5.5 of 6
    auc, mad = cosy([3.0, 2.0, 1.0], [1.0, 0.0])
    assert auc == pytest.approx(5.5 / 6)
    assert mad == pytest.approx((2.0 - 0.5) / 0.5)  # population std of the control set
    # vectorised over units: column-wise the same as one unit at a time
    rng = np.random.default_rng(0)
    concept, control = rng.normal(1, 1, (7, 3)), rng.normal(0, 1, (11, 3))
    aucs, mads = cosy(concept, control)
    for unit in range(3):
        assert (aucs[unit], mads[unit]) == pytest.approx(cosy(concept[:, unit], control[:, unit]))
    assert cosy([1.0, 1.0], [1.0, 1.0]) == (0.5, pytest.approx(np.nan, nan_ok=True))
    with pytest.raises(ValueError, match="same number of units"):
        cosy(np.zeros((2, 3)), np.zeros((2, 4)))


def test_simulation_correlation_by_hand():
    # x - mean = (-1, 0, 1), y - mean = (-1, 1, 0): r = 1 / (sqrt(2) sqrt(2)) = 0.5
    assert simulation_correlation([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
    assert simulation_correlation([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    assert np.isnan(simulation_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    both = simulation_correlation(np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(both, [1.0, -1.0])


def test_auprc_by_hand():
    # ranked: 0.9 (hit, P=1, R=1/2), 0.8 (miss), 0.3 (hit, P=2/3, R=1) -> 1/2 * 1 + 1/2 * 2/3
    assert auprc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1]) == pytest.approx(0.5 + 1 / 3)
    # tied scores form one threshold: {0.5, 0.5} gives P=1/2 at R=1/2, then P=2/3 at R=1
    assert auprc([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.25 + 1 / 3)
    assert auprc([1, 1, 0], [0.9, 0.8, 0.1]) == pytest.approx(1.0)
    assert np.isnan(auprc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_auprc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is optional")
    rng = np.random.default_rng(1)
    truth = rng.random((300, 4)) < 0.2
    scores = np.round(rng.normal(size=(300, 4)) + truth, 1)  # rounded: many ties
    for unit in range(4):
        expected = metrics.average_precision_score(truth[:, unit], scores[:, unit])
        assert auprc(truth[:, unit], scores[:, unit]) == pytest.approx(expected)
        auc = metrics.roc_auc_score(truth[:, unit], scores[:, unit])
        assert presence_auc(scores[:, [unit]], truth[:, [unit]])[0, 0] == pytest.approx(auc)
        assert cosy(scores[truth[:, unit], unit], scores[~truth[:, unit], unit])[0] == pytest.approx(auc)


# -- activations ---------------------------------------------------------------------------------

def test_unit_activations_match_the_store(store):
    dataset = DemoWorldDataset("probe", size=PROBE_SAMPLES)
    images = _stack(dataset)[store.sample_index]
    model = make_model()
    for layer in LAYERS:
        for reduction in ("max", "mean"):
            acts = unit_activations(model, layer, images, reduction=reduction, batch_size=16,
                                    composite=make_composite())
            np.testing.assert_allclose(acts, store.statistic(layer, "activation", reduction), rtol=1e-4, atol=1e-5)
    # without the composite, BatchNorm is not folded into conv3: its output is the plain conv's
    plain = unit_activations(model, "features.conv3", images[:4], reduction="mean")
    with torch.no_grad():
        reference = model.features[:9](images[:4]).mean((2, 3)).numpy()  # conv1 ... conv3
    np.testing.assert_allclose(plain, reference, rtol=1e-4, atol=1e-5)
    assert not any(module._forward_hooks for module in model.modules())
    with pytest.raises(ValueError, match="reduction"):
        unit_activations(model, "fc", images[:2], reduction="median")


# -- concept-image sources -----------------------------------------------------------------------

def test_demo_renderer_source_draws_the_concept():
    source = DemoRendererSource()
    images = source.images("snow", 6, seed=3)
    assert images.shape == (6, 3, 64, 64) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    pixels, scenes = render_phrase("snow", 6, 3)
    np.testing.assert_allclose(images.numpy(), pixels.transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    assert all(scene.background == "snow" for scene in scenes)
    # the corners never hold the object: snow is bright and grey, grass is green
    assert images[:, :, :4, :4].mean() > 0.8
    grass = source.images("grass", 6, seed=3)[:, :, :4, :4].mean((0, 2, 3))
    assert grass[1] > grass[0] and grass[1] > grass[2]
    _, red = render_phrase("red circle", 4, 0)
    assert all(s.colour == "red" and s.shape == "circle" for s in red)


def test_unknown_label_is_a_clear_error():
    source = DemoRendererSource()
    with pytest.raises(UnknownConceptError, match="cannot draw 'dog'"):
        source.images("dog", 2)
    with pytest.raises(UnknownConceptError, match="'dog'"):
        source.images("dog on grass", 2)  # strict: not silently "grass"
    assert isinstance(UnknownConceptError("x"), ValueError)
    assert DemoRendererSource(strict=False).images("dog on grass", 2).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="count"):
        source.images("red", 0)


def test_retrieval_source_returns_the_nearest_images(store, encoder):
    dataset = DemoWorldDataset("probe", size=PROBE_SAMPLES)
    source = RetrievalSource(store, dataset, encoder)
    text = torch.nn.functional.normalize(embed_labels(encoder, ["red circle"]), dim=-1).numpy()[0]
    similarity = store.embeddings() @ text
    expected = store.sample_index[np.argsort(-similarity, kind="stable")[:5]]
    np.testing.assert_array_equal(source.nearest("red circle", 5), expected)
    images = source.images("red circle", 5)
    np.testing.assert_array_equal(images.numpy(), _stack(dataset)[expected].numpy())
    # from a plain embedding matrix, excluding the best match
    embeddings = store.embeddings()[np.argsort(store.sample_index)]
    excluded = RetrievalSource(embeddings, dataset, encoder, exclude=[expected[0]])
    np.testing.assert_array_equal(excluded.nearest("red circle", 4), expected[1:5])
    with pytest.raises(UnknownConceptError, match="holds 64 images"):
        source.images("red", PROBE_SAMPLES + 1)


def test_diffusers_source_without_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install diffusers"):
            DiffusersSource(pipeline=None)
    else:
        pytest.skip("diffusers is installed; see test_diffusers_source_with_a_tiny_pipeline")


def test_diffusers_source_with_a_tiny_pipeline(tmp_path):
    pytest.importorskip("diffusers", reason="diffusers is not installed (it is not a dependency of crp-csp)")
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from conftest import write_clip_bpe_files

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4)
    vocab, merges = write_clip_bpe_files(tmp_path / "bpe")
    tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=16)  # as conftest builds it
    text = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=49408, max_position_embeddings=16))
    pipeline = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                                       scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    source = DiffusersSource(pipeline, image_size=64, batch_size=2, num_inference_steps=2, height=16, width=16)
    images = source.images("red circle", 3, seed=0)
    assert images.shape == (3, 3, 64, 64) and 0 <= images.min() and images.max() <= 1


# -- ground truth and the final layer ------------------------------------------------------------

def test_best_explaining_attribute_finds_planted_concepts():
    heldout = DemoWorldDataset("heldout", size=300)
    circle, striped_circle = heldout.presence("circle"), heldout.presence("striped circle")
    rng = np.random.default_rng(0)
    acts = np.stack([circle + rng.normal(0, 0.01, 300),
                     striped_circle + 0.3 * circle + rng.normal(0, 0.2, 300),  # "circle" AUC < 1
                     striped_circle + 0.3 * circle,  # both AUCs are 1: correlation breaks the tie
                     rng.normal(0, 1, 300)], axis=1)
    best, auc = best_explaining_attribute(acts, heldout)
    assert best[:3] == ["circle", "striped circle", "striped circle"]
    assert auc[0] == pytest.approx(1.0) and auc[2] == pytest.approx(1.0)
    assert 0.5 < auc[3] < 1.0  # the best of many chance AUCs
    expected = presence_auc(acts[:, [1]], np.stack([circle, striped_circle], 1))[:, 0]
    assert auc[1] == pytest.approx(expected[1]) and expected[0] < expected[1]
    assert same_concept("circle striped", "striped circle") and not same_concept("dog on grass", "grass")
    assert is_confounded_attribute("striped circle") and not is_confounded_attribute("red")
    assert concept_overlap("circle", "plain circle") == 0.5 and concept_overlap("red", "circle on grass") == 0.0
    assert names_incidental_attribute("circle on grass", "circle") and names_incidental_attribute("red", "striped")
    assert not names_incidental_attribute("grass", "circle on grass") and not names_incidental_attribute("red", "star")
    assert concept_overlap("a dog", "dog") == 1.0 and concept_overlap("dog", "red dog") == 0.5


def test_final_layer_accuracy():
    def unit(i, labels):
        return UnitLabel(i, labels, [0.0] * len(labels), [], [], [], [])

    labels = LayerLabels("fc", "test", {}, [
        unit(0, [CLASS_NAMES[0], "red"]),  # top-1 hit
        unit(1, ["red", "blue", "green", "star", CLASS_NAMES[1]]),  # top-5 hit
        unit(2, ["red", "blue", "green", "star", "grass", CLASS_NAMES[2]]),  # rank 6: miss
        unit(3, [CLASS_NAMES[3].upper()]),  # case does not matter
    ])
    assert final_layer_accuracy(labels, CLASS_NAMES) == {"top1": 0.5, "top5": 0.75, "units": 4}


# -- evaluate_labels end to end --------------------------------------------------------------------

def test_evaluate_labels_end_to_end(store, encoder):
    layer = "features.conv4"
    labels = label_units(store, layer, load_candidates(["demo"]), encoder=encoder, scorer=CSPScorer(),
                         selection_config=SelectionConfig(scored_count=5))
    heldout = DemoWorldDataset("heldout", size=48)
    control = _stack(DemoWorldDataset("control", size=32))
    model, composite = make_model(), make_composite()
    result = evaluate_labels(model, layer, labels, heldout, encoder=encoder, concept_source=DemoRendererSource(),
                             control_images=control, composite=composite, concept_count=6)
    assert result.layer == layer and result.method == "csp-g1" and len(result.units) == 64
    for row in result.units:
        assert row["concept_source"] == "demo-renderer"
        assert 0.0 <= row["cosy_auc"] <= 1.0 and np.isfinite(row["cosy_mad"])
        assert row["simcorr"] is None or -1.0 <= row["simcorr"] <= 1.0
        assert row["auprc"] is None or 0.0 <= row["auprc"] <= 1.0
        assert 0.0 <= row["auprc_chance"] <= 1.0 and row["gt_match"] in (0.0, 1.0)
        assert row["gt_match"] <= row["gt_overlap"] <= 1.0
        assert 0.5 <= row["gt_auc"] <= 1.0 and row["gt_attribute"] in load_candidates(["demo"]).labels
    summary = result.summary()
    assert set(METRICS) <= set(summary) and summary["units"] == 64 and summary["cosy_auc_n"] == 64
    json.dumps(result.to_dict(), allow_nan=False)
    assert result.config["evaluation"]["concept_sources"] == [{"source": "demo-renderer", "strict": True}]

    # the numbers are the metrics of the unit's activations, recomputed here
    row = result.units[5]
    concept = unit_activations(model, layer, DemoRendererSource().images(row["label"], 6, 0), composite=composite)
    control_acts = unit_activations(model, layer, control, composite=composite)
    assert row["cosy_auc"] == pytest.approx(cosy(concept[:, 5], control_acts[:, 5])[0])
    acts = unit_activations(model, layer, _stack(heldout), composite=composite)
    assert row["auprc"] == pytest.approx(auprc(heldout.presence(row["label"]), acts[:, 5]))

    # a label the renderer cannot draw falls back to retrieval, and has no ground truth
    custom = LayerLabels(layer, "custom", {}, [UnitLabel(0, ["dog"], [1.0], [], [], [], []),
                                               UnitLabel(1, ["red"], [1.0], [], [], [], [])])
    probe = DemoWorldDataset("probe", size=PROBE_SAMPLES)
    evaluator = LabelEvaluator(model, layer, heldout, encoder=encoder, control_images=control, composite=composite,
                               concept_source=[DemoRendererSource(), RetrievalSource(store, probe, encoder)],
                               concept_count=6)
    dog, red = evaluator.evaluate(custom).units
    shared = LabelEvaluator(model, layer, heldout, encoder=encoder, control_images=control, composite=composite,
                            concept_source=DemoRendererSource(), concept_count=6,
                            heldout_embeddings=evaluator.heldout_data()[1])
    assert shared.evaluate(custom).units[1] == red  # embeddings passed in, not recomputed: same numbers
    assert dog["concept_source"] == "retrieval" and dog["auprc"] is None and dog["gt_match"] == 0.0
    assert red["concept_source"] == "demo-renderer" and red["auprc"] is not None
    only_renderer = evaluate_labels(model, layer, custom, heldout, encoder=encoder, control_images=control,
                                    concept_source=DemoRendererSource(), concept_count=6)
    assert only_renderer.units[0]["cosy_auc"] is None and only_renderer.summary()["cosy_auc_n"] == 1
    with pytest.raises(ValueError, match="layer"):
        evaluate_labels(model, "fc", custom, heldout, encoder=encoder, control_images=control,
                        concept_source=DemoRendererSource())
