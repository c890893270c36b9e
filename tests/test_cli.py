"""The ``crp-csp`` command line: help, clear errors, and small end-to-end runs."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from crp_csp.cli import build_parser, main
from crp_csp.demo.models import CLASSIFIER_WEIGHTS, CLIP_WEIGHTS
from crp_csp.scoring import LayerLabels
from crp_csp.store import AnalysisStore

COMMANDS = ("analyze", "label", "evaluate", "report", "demo")
HAVE_WEIGHTS = CLASSIFIER_WEIGHTS.exists() and CLIP_WEIGHTS.exists()
RANDOM_MODEL = "analysis_job:make_model"  # the seeded random demo classifier of the tests


def run(capsys, *argv):
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("command", (None,) + COMMANDS)
def test_help_documents_the_options(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapping inside option names
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"] if command is None else [command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    expected = {
        None: COMMANDS,
        "analyze": ("--model", "--dataset", "--samples", "--image-size", "--layers", "--encoder", "--composite",
                    "--device", "--batch-size", "--out", "--overwrite", "torchvision:", "ImageFolder"),
        "label": ("--candidates", "--vlm", "--vlm-mode", "--api-key-env", "--methods", "--gamma", "endpoint:",
                  "local:", "clip-dissect", "--out"),
        "evaluate": ("--heldout", "--concept-count", "--out"),
        "report": ("--units", "--examples", "--no-heatmaps", "--out"),
        "demo": ("--samples", "--out"),
    }[command]
    for option in expected:
        assert option in text, f"{option} missing from `crp-csp {command} --help`"


def test_every_option_has_help():
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"crp-csp {name} {action.option_strings} has no help"


def test_bad_options_are_clear_errors(tmp_path, capsys):
    common = ["--dataset", "demo", "--samples", "8", "--layers", "fc", "--out", tmp_path / "a", "--quiet"]
    status, _, err = run(capsys, "analyze", "--model", "torchvision:nonexistent_net", "--encoder", "demo", *common)
    assert status == 2
    assert err.startswith("crp-csp: error: --model: bad model spec") and "Traceback" not in err
    status, _, err = run(capsys, "analyze", "--model", RANDOM_MODEL, "--encoder", "no-such-encoder", *common)
    assert status == 2 and "--encoder: bad encoder spec" in err and "Accepted forms" in err
    status, _, err = run(capsys, "analyze", "--model", RANDOM_MODEL, "--encoder", "demo",
                         "--dataset", tmp_path / "missing", "--layers", "fc", "--out", tmp_path / "b")
    assert status == 2 and "--dataset" in err and "ImageFolder" in err
    status, _, err = run(capsys, "analyze", "--model", "torchvision:resnet18", "--dataset", "demo", "--out", tmp_path)
    assert status == 2 and "--layers is required" in err
    status, _, err = run(capsys, "label", "--out", tmp_path / "empty")
    assert status == 2 and "crp-csp analyze" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "--view", "sideways"])
    assert exit_info.value.code == 2
    assert "--view" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fake_vlm():
    """A chat-completions server that always proposes the same three concepts."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            requests.append(self.path)
            answer = {"role": "assistant", "content": "Zebra stripes, glowing ring, tiny moon"}
            body = json.dumps({"choices": [{"message": answer}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    server.shutdown()


def test_analyze_label_evaluate_report(tmp_path, capsys, tiny_hf_clip_dir, fake_vlm):
    out = tmp_path / "run"
    labels_file = tmp_path / "mine.txt"
    labels_file.write_text("# my labels\n<script>alert(1)</script>\nred circle\n", encoding="utf-8")
    analyze = ["analyze", "--model", RANDOM_MODEL, "--dataset", "demo", "--samples", 64, "--layers",
               "features.conv4,fc", "--encoder", f"hf:{tiny_hf_clip_dir}", "--crop-count", 0, "--pool-size", 40,
               "--batch-size", 32, "--out", out, "--quiet"]
    status, text, err = run(capsys, *analyze)
    assert status == 0, err
    assert "64 samples" in text and (out / "analysis.h5").exists()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"] == RANDOM_MODEL and settings["layers"] == "features.conv4,fc"

    # the same command again reuses the store; other settings need --overwrite
    assert run(capsys, *analyze)[0] == 0
    status, _, err = run(capsys, *analyze[:6], 48, *analyze[7:])
    assert status == 2 and "--overwrite" in err

    status, _, err = run(capsys, "label", "--out", out, "--methods", "csp,lime", "--quiet")
    assert status == 2 and "--methods" in err and "lime" in err
    status, _, err = run(capsys, "label", "--out", out, "--view", "crop", "--scored-count", 10, "--quiet")
    assert status == 2 and "--view" in err and "--crop-count 30" in err
    status, _, err = run(capsys, "label", "--out", out, "--vlm", "endpoint:no-url", "--quiet")
    assert status == 2 and "--vlm" in err and "endpoint:MODEL@URL" in err

    url, requests = fake_vlm
    label = ["label", "--out", out, "--candidates", f"demo,{labels_file}", "--methods", "csp,semanticlens,clip-dissect",
             "--scored-count", 10, "--top-k", 3, "--vlm", f"endpoint:fake-vlm@{url}", "--layers", "fc", "--quiet"]
    status, text, err = run(capsys, *label)
    assert status == 0, err
    assert "fc: 3 candidate labels from endpoint:fake-vlm" in text
    asked = len(requests)
    assert asked >= 1
    assert run(capsys, *label)[0] == 0 and len(requests) == asked, "the second run must use the cached answers"
    status, _, err = run(capsys, "label", "--out", out, "--layers", "features.conv4", "--scored-count", 10, "--quiet")
    assert status == 0, err
    store = AnalysisStore(out / "analysis.h5")
    csp = LayerLabels.load(store, "fc", "csp-g1")
    assert csp.sources["zebra stripes"] == ["vlm:fake-vlm"]
    assert csp.sources["<script>alert(1)</script>"] == ["file:mine.txt"]
    for name in ("fc.csp-g1.json", "fc.csp-g1.csv", "fc.semanticlens.json", "fc.clip-dissect.csv",
                 "features.conv4.csp-g1.json"):
        assert (out / "labels" / name).exists()

    status, text, err = run(capsys, "evaluate", "--out", out, "--layers", "fc", "--methods", "csp",
                            "--heldout-samples", 40, "--control-samples", 20, "--concept-count", 4, "--quiet")
    assert status == 0, err
    evaluation = json.loads((out / "evaluation" / "fc.csp-g1.json").read_text())
    assert len(evaluation["units"]) == 16 and "final_layer" in evaluation

    status, text, err = run(capsys, "report", "--out", out, "--units", 2, "--examples", 3, "--quiet")
    assert status == 0, err
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('data-unit="') == 64 + 16
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "vlm:fake-vlm" in page and "clip-dissect" in page

    status, _, err = run(capsys, "report", "--out", out, "--model", "torchvision:resnet18", "--quiet")
    assert status == 2 and "not the one" in err


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="the demo weights (crp_csp/demo/weights/*.pt) are not built")
def test_demo_model_defaults(tmp_path, capsys):
    out = tmp_path / "demo"
    status, text, err = run(capsys, "analyze", "--samples", 64, "--crop-count", 0, "--out", out, "--quiet")
    assert status == 0, err
    assert json.loads((out / "settings.json").read_text())["encoder"] == "demo"
    assert "layers features.conv4, fc" in text
    status, text, err = run(capsys, "label", "--out", out, "--layers", "fc", "--scored-count", 10, "--quiet")
    assert status == 0, err
    assert "fc [csp-g1] 16 units against 68 candidates" in text and "fc [semanticlens] 16 units" in text


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="the demo weights (crp_csp/demo/weights/*.pt) are not built")
def test_demo_command_runs_every_step(tmp_path, capsys, monkeypatch):
    import crp_csp.cli as cli

    # the real demo analyses 2000 images; the wiring is the same with a handful
    monkeypatch.setitem(cli.DEMO_RUN, "heldout_samples", 40)
    monkeypatch.setitem(cli.DEMO_RUN, "control_samples", 20)
    monkeypatch.setitem(cli.DEMO_RUN, "concept_count", 3)
    monkeypatch.setitem(cli.DEMO_RUN, "units", 1)
    out = tmp_path / "demo"
    status, text, err = run(capsys, "demo", "--samples", 64, "--out", out, "--quiet")
    assert status == 0, err
    for step in ("analyze", "label", "evaluate", "report"):
        assert f"== crp-csp {step}" in text
    assert f"open {(out / 'report.html').resolve()}" in text
    assert (out / "evaluation" / "fc.csp-g1.json").exists()
