"""The HTML report (content, escaping, a real browser) and SemanticLens' interpretability scores."""
import html.parser
import shutil
import subprocess

import numpy as np
import pytest
import torch
from semanticlens.scores import clarity_score, polysemanticity_score, redundancy_score

from analysis_job import make_composite, make_encoder, make_model, run
from crp_csp.candidates import load_candidates
from crp_csp.contrastive import SelectionConfig, select_contrastive
from crp_csp.demo import DemoWorldDataset
from crp_csp.report import evaluation_units, layer_content, write_report
from crp_csp.scoring import label_units, make_scorer
from crp_csp.scoring.interpretability import clarity, kmeans, polysemanticity, redundancy

SAMPLES = 80
LAYERS = ("features.conv4", "fc")
HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
HOSTILE_SOURCE = "vlm:<b>evil</b>"
DETAILED = 3


# --- interpretability scores against semanticlens 0.2.1 -------------------------------------------

def _clustered(seed: int, units: int = 6, count: int = 24, dim: int = 32, noise: float = 0.05):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(units, 2, dim, generator=generator), dim=-1)
    share = torch.linspace(0.2, 0.8, units)
    members = (torch.rand(units, count, generator=generator) < share[:, None]).long()
    members[:, 0], members[:, 1], members[:, 2], members[:, 3] = 0, 0, 1, 1  # both clusters have >= 2 members
    points = centres[torch.arange(units)[:, None], members]
    points = points + noise * torch.randn(units, count, dim, generator=generator)
    return torch.nn.functional.normalize(points, dim=-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_interpretability_scores_match_semanticlens(seed):
    generator = torch.Generator().manual_seed(seed)
    random = torch.nn.functional.normalize(torch.randn(5, 16, 24, generator=generator), dim=-1)
    torch.testing.assert_close(clarity(random), clarity_score(random))
    units = torch.randn(20, 24, generator=generator)
    torch.testing.assert_close(redundancy(units), redundancy_score(units))
    clustered = _clustered(seed)
    torch.testing.assert_close(polysemanticity(clustered), polysemanticity_score(clustered).float(), atol=1e-4, rtol=0)
    # one far outlier leaves a cluster of 1 member: both fall back to 1 - mean cos(mean, example)
    outlier = clustered.clone()
    outlier[:, :, :] = clustered[:, :1] + 0.02 * torch.randn(clustered.shape, generator=generator)
    outlier[:, 5] = -outlier[:, 5]
    torch.testing.assert_close(polysemanticity(outlier), polysemanticity_score(outlier).float(), atol=1e-4, rtol=0)


def test_kmeans_finds_planted_clusters_and_validates_shapes():
    points = _clustered(3, units=2, noise=0.01)
    _, assignment, _ = kmeans(points, 2, seed=0)
    for unit in range(2):
        same = points[unit] @ points[unit].T > 0.5
        assert torch.equal(assignment[unit][:, None] == assignment[unit][None, :], same)
    with pytest.raises(ValueError, match=r"\[units, examples, dim\]"):
        clarity(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 2 units"):
        redundancy(torch.zeros(1, 4))


# --- a small report, written once -------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    store = run(folder / "store.h5", SAMPLES, crop_count=0)
    encoder = make_encoder()
    candidates = load_candidates(["demo"])
    candidates.add(HOSTILE, HOSTILE_SOURCE)
    labels = {}
    for layer in LAYERS:
        selection = select_contrastive(store, layer, SelectionConfig(scored_count=10))
        labels[layer] = [label_units(store, layer, candidates, encoder=encoder, scorer=make_scorer(name),
                                     selection=selection, top_k=4) for name in ("csp", "semanticlens")]
    # make sure both hostile labels are shown, as top label and as runner-up
    first = labels["fc"][0].units[0]
    first.labels[:2] = list(HOSTILE)
    csp_fc = labels["fc"][0]
    evaluation = {"layer": "fc", "method": csp_fc.method, "summary": {"units": 16, "cosy_auc": 0.75},
                  "units": [{"unit": unit.unit, "label": unit.label, "cosy_auc": 0.5 + unit.unit / 100,
                             "cosy_mad": 1.0, "simcorr": float("nan"), "auprc": None, "gt_attribute": HOSTILE[1],
                             "gt_match": float(unit.unit % 2)} for unit in csp_fc.units]}
    evaluation["units"][1]["label"] = "a label the unit no longer has"  # stale: must be left out
    path = write_report(store, labels, folder / "report.html", model=make_model(),
                        dataset=DemoWorldDataset("probe", SAMPLES), composite=make_composite(),
                        evaluations={("fc", csp_fc.method): evaluation},
                        units_per_layer=DETAILED, progress=False)
    return {"path": path, "store": store, "labels": labels, "evaluation": evaluation}


class _Elements(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _elements(text: str):
    parser = _Elements()
    parser.feed(text)
    return parser.tags


def test_report_is_self_contained_and_escapes_every_string(report):
    text = report["path"].read_text(encoding="utf-8")
    tags = _elements(text)
    scripts = [attrs for tag, attrs in tags if tag == "script"]
    assert scripts == [{}], "exactly one inline script, ours"
    images = [attrs for tag, attrs in tags if tag == "img"]
    assert images and all(attrs["src"].startswith("data:image/png;base64,") for attrs in images)
    assert not any(tag in ("link", "iframe", "object", "embed") for tag, _ in tags)
    assert not any(key.startswith("on") for _, attrs in tags for key in attrs), "no event handler attributes"
    assert "http://" not in text and "https://" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert "vlm:&lt;b&gt;evil&lt;/b&gt;" in text
    for raw in HOSTILE + (HOSTILE_SOURCE,):
        assert raw not in text


def test_report_lists_every_unit_with_its_numbers(report):
    text = report["path"].read_text(encoding="utf-8")
    tags = _elements(text)
    tables = [attrs for tag, attrs in tags if tag == "table" and "data-layer" in attrs]
    assert [attrs["data-layer"] for attrs in tables] == list(LAYERS)
    rows = [int(attrs["data-unit"]) for tag, attrs in tags if tag == "tr" and "data-unit" in attrs]
    assert rows == list(range(64)) + list(range(16))
    details = [attrs["id"] for tag, attrs in tags if tag == "details" and attrs.get("class") == "unit"]
    assert len(details) == DETAILED * len(LAYERS)
    # faithfulness: present for fc/CSP (0.5 + unit/100), a dash elsewhere, the stale unit left out
    assert "0.520" in text and "0.510" not in text
    assert ">\u2013</td>" in text
    assert "no faithfulness evaluation for this layer" in text  # features.conv4


def test_layer_content_scores_and_evaluation_adapter(report):
    store, labels = report["store"], report["labels"]["features.conv4"]
    content = layer_content(store, "features.conv4", labels[::-1])  # CSP comes first whatever the order
    assert content.primary.method.startswith("csp") and content.comparison.method == "semanticlens"
    positives = np.array([unit.positives for unit in content.primary.units])
    embeddings = torch.from_numpy(store.take("samples/embedding", store.rows_of(positives.reshape(-1))))
    expected = clarity_score(embeddings.view(64, 10, -1))
    np.testing.assert_allclose([row.clarity for row in content.rows], expected.numpy(), atol=1e-5)
    assert 0 <= content.agreement() <= 1
    assert content.candidate_counts[HOSTILE_SOURCE] == 2
    units = evaluation_units(report["evaluation"])
    assert units[3]["cosy_auc"] == pytest.approx(0.53)
    assert evaluation_units({"units": {"2": {"cosy_auc": 1.0}}}) == {2: {"cosy_auc": 1.0}}
    assert evaluation_units(None) == {}


# --- the report in a real browser ---------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (Debian: apt-get install -y chromium)")


def _chromium(*options, url):
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
               "--enable-logging=stderr", "--v=0", *options, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@needs_chromium
def test_report_runs_in_chromium_without_errors(report):
    url = report["path"].resolve().as_uri()
    result = _chromium("--virtual-time-budget=5000", "--dump-dom", url=url + "#selftest")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console_messages(result.stderr) == []
    dom = result.stdout
    tags = _elements(dom)
    body = next(attrs for tag, attrs in tags if tag == "body")
    assert body.get("data-ready") == "1", "the report's script did not run to its end"
    # no element was injected by a label
    assert sum(tag == "script" for tag, _ in tags) == 1
    assert not any(tag == "img" and attrs.get("src") == "x" for tag, attrs in tags)
    # the overview lists every unit, and sorting / filtering work in the browser
    import json

    selftest = json.loads(body["data-selftest"])
    assert [entry["rows"] for entry in selftest] == [64, 16]
    for entry in selftest:
        assert entry["sorted"] and entry["none"] == 0 and entry["all"] == entry["rows"]
        assert 1 <= entry["matching"] <= entry["rows"]


@needs_chromium
def test_report_screenshot_is_not_blank(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    result = _chromium("--virtual-time-budget=5000", f"--screenshot={shot}", "--window-size=1280,1600",
                       url=report["path"].resolve().as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert _console_messages(result.stderr) == []
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1280)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    assert (pixels < 128).mean() > 0.01, "hardly any dark pixels: no text or figures rendered"
