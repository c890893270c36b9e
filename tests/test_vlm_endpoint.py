"""OpenAICompatibleVLM against a real local HTTP server that speaks POST /v1/chat/completions."""
from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from crp_csp.candidates.vlm import (
    POS_NEG_PROMPT,
    POS_ONLY_PROMPT,
    STORE_GROUP,
    GenerationCache,
    OpenAICompatibleVLM,
    VLMEndpointError,
    grid_shape,
    propose_candidates,
)

KEY_ENV = "CRP_CSP_TEST_VLM_KEY"
SECRET = "sk-test-S3CRET-9f8e7d6c5b4a"
TILE = 8


def completion(text: str) -> dict:
    return {"status": 200, "body": {"id": "x", "object": "chat.completion",
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}}


class FakeServer:
    """A scripted chat-completions server: answers ``script`` in order, then ``default``; records requests."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[dict] = []
        self.default = completion("red circle, stripes, sand background")
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw})
                    reply = server.script.pop(0) if server.script else server.default
                time.sleep(reply.get("delay", 0))
                body = reply["body"]
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(reply["status"])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.get("headers", {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def bodies(self) -> list[dict]:
        return [json.loads(request["raw"]) for request in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeServer()
    yield fake
    fake.close()


def backend(server: FakeServer, **kwargs) -> OpenAICompatibleVLM:
    options = dict(model="tiny-vlm", base_url=server.base_url, api_key_env=KEY_ENV, timeout=2, max_retries=2,
                   backoff=0.01)
    options.update(kwargs)
    return OpenAICompatibleVLM(**options)


def unit_images(units=(0, 1), count=9, seed=0) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(seed)
    positives = {unit: torch.rand(count, 3, TILE, TILE, generator=generator) for unit in units}
    negatives = {unit: torch.rand(count, 3, TILE, TILE, generator=generator) for unit in units}
    return positives, negatives


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    data = base64.b64decode(url[len(prefix):])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def test_pos_neg_requests_carry_two_png_grids_prompt_model_and_key(server, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="crp_csp")
    monkeypatch.setenv(KEY_ENV, SECRET)
    positives, negatives = unit_images()
    cache_file = tmp_path / "generations.json"
    vlm = backend(server)
    proposals = propose_candidates(vlm, positives, negatives, mode="pos-neg",
                                   cache=GenerationCache(cache_file), progress=False)

    assert len(server.requests) == 2
    for request, body in zip(server.requests, server.bodies()):
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
        assert body["model"] == "tiny-vlm" and body["max_tokens"] == 64 and body["temperature"] == 0.0
        (message,) = body["messages"]
        assert message["role"] == "user"
        images = [part for part in message["content"] if part["type"] == "image_url"]
        texts = [part["text"] for part in message["content"] if part["type"] == "text"]
        assert texts == [POS_NEG_PROMPT]
        assert len(images) == 2
        grids = [decode_data_url(part["image_url"]["url"]) for part in images]
        assert all(grid.size == grid_shape(TILE, TILE)[::-1] and grid.format == "PNG" for grid in grids)
        assert grids[0].tobytes() != grids[1].tobytes()

    assert sorted(proposals) == [0, 1]
    for unit, proposal in proposals.items():
        assert proposal.unit == unit
        assert proposal.concepts == ["red circle", "stripes", "sand background"]
        assert not proposal.malformed and proposal.reason is None and not proposal.cached
        assert proposal.raw == "red circle, stripes, sand background"

    # the key appears in no log record, no repr, and not in the cache file
    assert SECRET not in caplog.text and SECRET not in repr(vlm)
    assert cache_file.exists() and SECRET not in cache_file.read_text()


def test_no_authorization_header_without_the_variable(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    positives, _ = unit_images(units=(3,))
    proposals = propose_candidates(backend(server), positives, progress=False)
    assert proposals[3].concepts == ["red circle", "stripes", "sand background"]
    (request,) = server.requests
    assert "Authorization" not in request["headers"]
    (body,) = server.bodies()
    parts = body["messages"][0]["content"]
    assert [part["type"] for part in parts] == ["image_url", "text"] and parts[-1]["text"] == POS_ONLY_PROMPT


def test_key_is_read_at_request_time(server, monkeypatch):
    vlm = backend(server)
    monkeypatch.delenv(KEY_ENV, raising=False)
    positives, _ = unit_images(units=(0,))
    propose_candidates(vlm, positives, progress=False)
    monkeypatch.setenv(KEY_ENV, SECRET)
    propose_candidates(vlm, unit_images(units=(0,), seed=1)[0], progress=False)
    assert "Authorization" not in server.requests[0]["headers"]
    assert server.requests[1]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert not any(SECRET in str(value) for value in vars(vlm).values())


def test_malformed_answers_are_recorded(server):
    server.script = [completion("just one thing"), completion(""),
                     completion("1. Red\n2. Blue\n3. Green\n4. Yellow")]
    positives, _ = unit_images(units=(0, 1, 2))
    proposals = propose_candidates(backend(server), positives, progress=False)
    assert proposals[0].malformed and proposals[0].concepts == ["just one thing"]
    assert "got 1" in proposals[0].reason and proposals[0].raw == "just one thing"
    assert proposals[1].malformed and proposals[1].concepts == [] and proposals[1].reason == "empty answer"
    assert proposals[2].malformed and proposals[2].concepts == ["red", "blue", "green", "yellow"]


def test_cache_in_a_store_answers_a_rerun_without_requests(server, monkeypatch, minimal_store):
    monkeypatch.setenv(KEY_ENV, SECRET)
    positives, negatives = unit_images(units=(0, 1, 2))
    first = propose_candidates(backend(server), positives, negatives, mode="pos-neg",
                               cache=GenerationCache(minimal_store), progress=False)
    assert len(server.requests) == 3 and not any(p.cached for p in first.values())
    arrays, attrs = minimal_store.read_group(STORE_GROUP)
    assert len(arrays["keys"]) == len(arrays["answers"]) == 3
    assert minimal_store.path.read_bytes().find(SECRET.encode()) == -1

    # a fresh cache on the same file (by path) serves every answer; the server is not asked again
    again = propose_candidates(backend(server), positives, negatives, mode="pos-neg",
                               cache=GenerationCache(minimal_store.path), progress=False)
    assert len(server.requests) == 3
    assert all(p.cached for p in again.values())
    assert {u: p.concepts for u, p in again.items()} == {u: p.concepts for u, p in first.items()}

    # pos-only questions are different questions; a new unit merges with what is stored
    propose_candidates(backend(server), {0: positives[0]}, mode="pos-only",
                       cache=GenerationCache(minimal_store), progress=False)
    assert len(server.requests) == 4
    arrays, _ = minimal_store.read_group(STORE_GROUP)
    assert len(arrays["keys"]) == 4


def test_timeouts_are_retried_then_fail(server):
    server.default = dict(completion("a, b, c"), delay=0.3)
    vlm = backend(server, timeout=0.1, max_retries=1)
    positives, _ = unit_images(units=(0,))
    start = time.monotonic()
    with pytest.raises(VLMEndpointError, match="2 attempts") as error:
        propose_candidates(vlm, positives, progress=False)
    assert time.monotonic() - start < 1.5
    assert "timed out" in str(error.value).lower() or "timeout" in str(error.value).lower()
    assert error.value.status is None
    assert len(server.requests) == 2


def test_a_slow_answer_is_retried_and_then_succeeds(server):
    server.script = [dict(completion("slow, slow, slow"), delay=0.3)]
    server.default = completion("fast, quick, rapid")
    vlm = backend(server, timeout=0.1, max_retries=2)
    proposals = propose_candidates(vlm, unit_images(units=(0,))[0], progress=False)
    assert proposals[0].concepts == ["fast", "quick", "rapid"]
    assert len(server.requests) == 2


def test_429_is_retried_respecting_retry_after(server, caplog):
    caplog.set_level(logging.WARNING, logger="crp_csp")
    server.script = [{"status": 429, "body": {"error": {"message": "slow down"}}, "headers": {"Retry-After": "0"}}] * 2
    vlm = backend(server, backoff=30.0)  # only Retry-After keeps this fast
    start = time.monotonic()
    proposals = propose_candidates(vlm, unit_images(units=(0,))[0], progress=False)
    assert time.monotonic() - start < 5
    assert proposals[0].concepts == ["red circle", "stripes", "sand background"]
    assert len(server.requests) == 3
    assert "429" in caplog.text


def test_500s_beyond_max_retries_fail(server):
    server.default = {"status": 503, "body": {"error": {"message": "overloaded"}}}
    vlm = backend(server, max_retries=2)
    with pytest.raises(VLMEndpointError) as error:
        vlm.generate([propose_request()])
    assert error.value.status == 503
    assert "3 attempts" in str(error.value) and "overloaded" in str(error.value)
    assert len(server.requests) == 3


def propose_request():
    from crp_csp.candidates.vlm import build_request

    return build_request(torch.rand(9, 3, TILE, TILE))


@pytest.mark.parametrize("status", [401, 400])
def test_client_errors_fail_at_once_without_the_key(server, monkeypatch, caplog, status):
    caplog.set_level(logging.DEBUG, logger="crp_csp")
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.default = {"status": status, "body": {"error": {"message": f"bad request, key {SECRET} rejected"}}}
    vlm = backend(server)
    with pytest.raises(VLMEndpointError) as error:
        vlm.generate([propose_request()])
    message = str(error.value)
    assert error.value.status == status and f"HTTP {status}" in message and "rejected" in message
    assert SECRET not in message and SECRET not in repr(error.value) and SECRET not in caplog.text
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert len(server.requests) == 1


def test_invalid_json_and_non_completions_are_clear_errors(server):
    vlm = backend(server)
    server.script = [{"status": 200, "body": b"<html>proxy error</html>"}]
    with pytest.raises(VLMEndpointError, match="invalid JSON"):
        vlm.generate([propose_request()])
    server.script = [{"status": 200, "body": {"object": "list", "data": []}}]
    with pytest.raises(VLMEndpointError, match="not a chat completion"):
        vlm.generate([propose_request()])
    server.script = [{"status": 200, "body": {"choices": []}}]
    with pytest.raises(VLMEndpointError, match="not a chat completion"):
        vlm.generate([propose_request()])
    # content given as a list of parts is joined
    server.script = [{"status": 200, "body": {"choices": [{"message": {"content": [
        {"type": "text", "text": "red, "}, {"type": "text", "text": "blue, green"}]}}]}}]
    assert vlm.generate([propose_request()]) == ["red, blue, green"]
    assert len(server.requests) == 4  # none of them was retried


def test_connection_errors_are_retried_then_fail(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vlm = OpenAICompatibleVLM("tiny-vlm", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff=0.01,
                              timeout=0.5)
    with pytest.raises(VLMEndpointError, match="2 attempts"):
        vlm.generate([propose_request()])


def test_a_failure_part_way_keeps_the_answers_already_received(server, tmp_path):
    cache_file = tmp_path / "generations.json"
    server.script = [completion("a, b, c"), {"status": 400, "body": {"error": {"message": "too large"}}}]
    positives, _ = unit_images(units=(0, 1))
    with pytest.raises(VLMEndpointError, match="too large"):
        propose_candidates(backend(server), positives, cache=GenerationCache(cache_file), progress=False)
    assert len(json.loads(cache_file.read_text())["entries"]) == 1

    proposals = propose_candidates(backend(server), positives, cache=GenerationCache(cache_file), progress=False)
    assert len(server.requests) == 3  # only unit 1 was asked again
    assert proposals[0].cached and proposals[0].concepts == ["a", "b", "c"]
    assert not proposals[1].cached


def test_pos_neg_needs_negatives_for_every_unit(server):
    positives, negatives = unit_images(units=(0, 1, 2))
    del negatives[1]
    with pytest.raises(ValueError, match="1 have none: 1"):
        propose_candidates(backend(server), positives, negatives, mode="pos-neg", progress=False)
    with pytest.raises(ValueError, match="negatives=None"):
        propose_candidates(backend(server), positives, None, mode="pos-neg", progress=False)
    with pytest.raises(ValueError, match="mode"):
        propose_candidates(backend(server), positives, mode="both", progress=False)
    assert server.requests == []
