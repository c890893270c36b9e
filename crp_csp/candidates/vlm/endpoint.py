"""A VLM behind an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, TGI, llama.cpp, OpenAI).

Standard library only. The API key is read from an environment variable at request time and goes
into the ``Authorization`` header and nowhere else: it is never stored on the object, logged, cached
or put into an exception message (a server message that echoes it is redacted).
"""
from __future__ import annotations

import base64
import email.utils
import http.client
import io
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request

from PIL import Image

from .base import VLMBackend, VLMRequest

logger = logging.getLogger(__name__)

#: Longest server message quoted in an error.
MAX_MESSAGE_CHARS = 500
#: Longest wait honoured from a ``Retry-After`` header, in seconds.
MAX_RETRY_AFTER = 300.0


class VLMEndpointError(RuntimeError):
    """The endpoint refused a request, kept failing, or answered something that is not a chat completion.

    Attributes
    ----------
    status : the HTTP status, or None when there was no HTTP answer (timeout, connection error, bad JSON).
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def image_data_url(image: Image.Image) -> str:
    """A ``data:image/png;base64,...`` URL of ``image``."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_payload(model: str, request: VLMRequest, max_tokens: int, temperature: float) -> dict:
    """The JSON body of one chat completion: one user message with the images, then the prompt."""
    content: list[dict] = [{"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in request.images]
    content.append({"type": "text", "text": request.prompt})
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _message_text(message) -> str:
    """The text of a chat message's ``content`` (a string, or a list of parts)."""
    content = message.get("content") if isinstance(message, dict) else None
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise TypeError(f"content of type {type(content).__name__}")


class OpenAICompatibleVLM(VLMBackend):
    """A VLM served behind an OpenAI-compatible chat completions API.

    Parameters
    ----------
    model : the model name the server expects (also the cache's model id).
    base_url : the API root; requests go to ``{base_url}/chat/completions``.
    api_key_env : environment variable holding the API key; sent as ``Authorization: Bearer`` only when set.
    timeout : seconds per HTTP request.
    max_retries : retries after the first attempt on 429, 5xx, timeouts and connection errors.
    backoff : first retry delay in seconds, doubled per retry (a ``Retry-After`` header overrides it).
    max_tokens, temperature : generation settings sent with each request.
    batch_size : requests per :meth:`generate` call made by ``propose_candidates`` (they run one after another).
    """

    def __init__(
        self,
        model: str,
        base_url: str = "http://localhost:8000/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_tokens: int = 64,
        temperature: float = 0.0,
        batch_size: int = 1,
    ):
        if max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("max_retries and backoff must be >= 0 and timeout > 0")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return (f"OpenAICompatibleVLM(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, timeout={self.timeout}, max_retries={self.max_retries})")

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def cache_settings(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature}

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def generate(self, requests: list[VLMRequest]) -> list[str]:
        """Answer each request with one chat completion (sequentially).

        Raises
        ------
        VLMEndpointError
            On a 4xx other than 429, on failures persisting beyond ``max_retries``, or on an answer
            that is not a chat completion.
        """
        return [self._complete(request) for request in requests]

    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def _redact(self, text: str, key: str | None) -> str:
        return text.replace(key, "[redacted]") if key else text

    def _complete(self, request: VLMRequest) -> str:
        body = json.dumps(chat_payload(self.model, request, self.max_tokens, self.temperature)).encode("utf-8")
        attempt = 0
        while True:
            key = self._api_key()
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            http_request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(http_request, timeout=self.timeout) as response:
                    status, payload = response.status, response.read()
            except urllib.error.HTTPError as error:
                status = error.code
                message = self._redact(self._server_message(error), key)
                retry_after = _retry_after(error.headers.get("Retry-After") if error.headers else None)
                if status == 429 or status >= 500:
                    problem = f"HTTP {status}: {message}"
                    attempt = self._wait_or_raise(attempt, problem, retry_after, status)
                    continue
                raise VLMEndpointError(f"{self.url} refused the request with HTTP {status}: {message}", status) from None
            except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, urllib.error.URLError) as error:
                reason = getattr(error, "reason", error)
                problem = f"{type(reason).__name__}: {self._redact(str(reason), key)}" if str(reason) else type(reason).__name__
                attempt = self._wait_or_raise(attempt, problem, None, None)
                continue
            return self._parse(payload, status, key)

    def _wait_or_raise(self, attempt: int, problem: str, retry_after: float | None, status: int | None) -> int:
        if attempt >= self.max_retries:
            raise VLMEndpointError(
                f"{self.url} failed after {attempt + 1} attempts; last: {problem}", status
            ) from None
        delay = retry_after if retry_after is not None else self.backoff * (2 ** attempt)
        logger.warning("%s: %s; retry %d/%d in %.2f s", self.url, problem, attempt + 1, self.max_retries, delay)
        time.sleep(delay)
        return attempt + 1

    @staticmethod
    def _server_message(error: urllib.error.HTTPError) -> str:
        try:
            raw = error.read().decode("utf-8", errors="replace")
        except Exception:  # noqa: BLE001 - the body is only quoted in the error message
            return error.reason if isinstance(error.reason, str) else ""
        try:
            data = json.loads(raw)
            detail = data.get("error", data) if isinstance(data, dict) else data
            if isinstance(detail, dict):
                detail = detail.get("message", detail)
            text = detail if isinstance(detail, str) else json.dumps(detail)
        except ValueError:
            text = raw
        text = " ".join(text.split()) or (error.reason if isinstance(error.reason, str) else "")
        return text[:MAX_MESSAGE_CHARS] + ("..." if len(text) > MAX_MESSAGE_CHARS else "")

    def _parse(self, payload: bytes, status: int, key: str | None) -> str:
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            excerpt = self._redact(payload[:200].decode("utf-8", errors="replace"), key)
            raise VLMEndpointError(
                f"{self.url} answered HTTP {status} with invalid JSON (starts {excerpt!r})", None
            ) from None
        try:
            if isinstance(data, dict) and "error" in data and "choices" not in data:
                raise ValueError(f"error object {json.dumps(data['error'])[:MAX_MESSAGE_CHARS]}")
            return _message_text(data["choices"][0]["message"])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise VLMEndpointError(
                f"{self.url} answered something that is not a chat completion "
                f"({type(error).__name__}: {self._redact(str(error), key)})", None
            ) from None
