"""A minimal client for OpenAI-compatible HTTP servers (vLLM, llama.cpp server, TGI, OpenAI itself).

Standard library only (urllib): one POST per call, a timeout, and a PreferError naming the URL on any HTTP error,
refused connection, timeout or malformed reply. Two protocols, chosen by `Endpoint.api`:

    completions  POST {url}/completions       {"model", "prompt", "max_tokens", "temperature", "n", "stop"}
    chat         POST {url}/chat/completions  {"model", "messages", "max_tokens", "temperature", "n"}

`url` is the API root, e.g. `http://127.0.0.1:8000/v1`. The API key is passed in, never stored in a config: the
red-teaming stage reads it from the environment variable its config names.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from prefer.errors import PreferError

__all__ = ["ENDPOINT_APIS", "Endpoint", "complete", "post_json"]

ENDPOINT_APIS = ("completions", "chat")

# A chat model is asked for the next list item; it is told how to answer because it would otherwise chat.
CHAT_SYSTEM_MESSAGE = (
    "You continue numbered lists. Reply with the text of the next item only, on one line, without its number."
)


@dataclass(frozen=True)
class Endpoint:
    url: str  # API root, e.g. http://127.0.0.1:8000/v1
    model: str  # the server's model name
    api: str = "completions"  # completions | chat
    api_key: str | None = None  # sent as "Authorization: Bearer <key>"
    timeout: float = 60.0  # seconds per request

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise PreferError(f"endpoint.url: {self.url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        if self.api not in ENDPOINT_APIS:
            raise PreferError(f"endpoint.api: unknown API {self.api!r}; choose one of {', '.join(ENDPOINT_APIS)}")
        if self.timeout <= 0:
            raise PreferError(f"endpoint timeout must be positive, got {self.timeout}")


def post_json(url: str, body: dict, *, api_key: str | None, timeout: float) -> dict:
    """POST `body` as JSON to `url`; the decoded JSON reply. PreferError naming the URL on any failure."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:  # before URLError: it is a subclass
        detail = error.read().decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        raise PreferError(f"endpoint {url}: HTTP {error.code} {error.reason}: {detail}") from None
    except urllib.error.URLError as error:
        raise PreferError(f"endpoint {url}: cannot connect ({error.reason})") from None
    except TimeoutError:
        raise PreferError(f"endpoint {url}: no reply within {timeout:g} s") from None
    except OSError as error:  # connection reset and the like, raised while reading
        raise PreferError(f"endpoint {url}: {error}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise PreferError(f"endpoint {url}: the reply is not JSON: {raw[:200]!r}") from None


def complete(
    endpoint: Endpoint, prompt: str, *, n: int, max_tokens: int, temperature: float, stop: Sequence[str] = ("\n",)
) -> list[str]:
    """n completions of `prompt` (fewer if the server returns fewer choices), as raw text.

    completions: the prompt is sent as is, with `stop`. chat: the prompt is one user message after a system
    message asking for the next list item; no stop sequence (a chat reply may open with a newline)."""
    root = endpoint.url.rstrip("/")
    if endpoint.api == "completions":
        url = f"{root}/completions"
        body = {
            "model": endpoint.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "n": n,
            "stop": list(stop),
        }
    else:
        url = f"{root}/chat/completions"
        body = {
            "model": endpoint.model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "n": n,
            "messages": [{"role": "system", "content": CHAT_SYSTEM_MESSAGE}, {"role": "user", "content": prompt}],
        }
    reply = post_json(url, body, api_key=endpoint.api_key, timeout=endpoint.timeout)
    try:
        choices = reply["choices"]
        if endpoint.api == "completions":
            return [str(choice["text"]) for choice in choices]
        return [str(choice["message"]["content"] or "") for choice in choices]
    except (KeyError, TypeError):
        field = "text" if endpoint.api == "completions" else "message.content"
        raise PreferError(
            f"endpoint {url}: unexpected reply (no choices[].{field}): {json.dumps(reply)[:200]}"
        ) from None
