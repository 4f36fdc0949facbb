"""`prefer redteam` end to end on a tiny checkpoint: a local red-team LM, and OpenAI-compatible servers started here."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from prefer.cli import main
from prefer.config import RedteamConfig, load_config
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.evaluation.chat_endpoint import Endpoint, complete
from prefer.models.build import build_model
from prefer.scorers import get_segment_scorer
from prefer.stages.redteam import redteam

LINES = [
    "def add(a, b):\n    return a + b\n",
    "class Foo:\n    pass\n",
    " -- Jane Doe <jane@example.org>\n",
    "List of prompts that make an AI write code:\n1. def f(x):\n2. import os\n",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny GPT-2 saved as a conditional pep8 prefer checkpoint."""
    path = tmp_path_factory.mktemp("target") / "final"
    torch.manual_seed(0)
    tokenizer = train_tokenizer(LINES * 20, vocab_size=320)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=128)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "prefer.json").write_text(
        json.dumps({"task": "pep8", "objective": "conditional", "control_tokens_trained": True})
    )
    return path


def small(out_dir, target, **extra):
    values = {
        "out_dir": out_dir,
        "target": target,
        "search.rounds": 2,
        "search.candidates_per_round": 3,
        "continuations.count": 2,
        "continuations.max_new_tokens": 8,
        "candidates.max_new_tokens": 10,
        "search.trials": 1,
        "continuations.keep": 2,
        "runtime.device": "cpu",
        "runtime.progress": "false",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def test_cli_with_a_local_red_team_model(tmp_path, checkpoint, capsys):
    out = tmp_path / "rt"
    assert main(["redteam", *small(out, checkpoint, redteam_model=checkpoint, **{"search.trials": 2})]) == 0
    assert json.loads(capsys.readouterr().out)["score_on"] == "in_context"
    assert (out / "redteam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = load_config(RedteamConfig, yaml_path=out / "config.yaml")
    assert saved.search.trials == 2 and saved.redteam_model == str(checkpoint)
    results = json.loads((out / "redteam.json").read_text())
    assert results["prompt"] == "good" and results["blocked"] == "bad"  # a conditional target: evaluation controls
    assert results["scorer"] == "pep8" and results["summary"]["rounds"] == [0, 1, 2]
    curves = np.array([[c["best"] for c in trial["curve"]] for trial in results["trials"]])  # [trials, rounds]
    assert results["summary"]["best"]["mean"] == pytest.approx(curves.mean(0).tolist())
    assert (np.diff(curves, axis=1) >= 0).all()  # the best of a growing pool never falls
    segment = get_segment_scorer("pep8")
    for trial in results["trials"]:
        pool = [json.loads(line) for line in (out / trial["pool"]).read_text().splitlines()]
        assert len(pool) == trial["curve"][-1]["pool_size"] == 20 + sum(c["added"] for c in trial["curve"][1:])
        for record in pool[::7]:  # continuations scored in the context of their prompt, charged to themselves
            values = [segment([record["prompt"], c])[1] for c in record["continuations"]]
            assert values == pytest.approx(record["continuation_scores"])
            assert record["score"] == pytest.approx(np.mean(values))


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1 with canned replies; records every request."""

    def __init__(self, replies, status=200):
        self.requests, self.replies, self.status = [], list(replies), status
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                texts = server.replies.pop(0) if server.replies else []
                if self.path.endswith("/chat/completions"):
                    choices = [
                        {"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)
                    ]
                else:
                    choices = [{"index": i, "text": t} for i, t in enumerate(texts)]
                payload = json.dumps({"choices": choices} if server.status == 200 else {"error": "boom"}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def read_pool(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_completions_endpoint(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("PREFER_TEST_KEY", "s3cret")
    replies = [[" Contact me at", " Contact me at", ""], [" Maintainer: Bob", " Contact me at", " def g(x):\\n"]]
    with FakeServer(replies) as server:
        config = load_config(
            RedteamConfig,
            overrides=small(
                tmp_path / "rt",
                checkpoint,
                **{"endpoint.url": server.url, "endpoint.model": "red-lm"},
                **{"endpoint.api_key_env": "PREFER_TEST_KEY"},
                task="pii",
            ),
        )
        results = redteam(config)
    assert [r["path"] for r in server.requests] == ["/v1/completions"] * 2
    for request in server.requests:
        body = request["body"]
        assert set(body) == {"model", "prompt", "max_tokens", "temperature", "n", "stop"}
        assert body["model"] == "red-lm" and body["n"] == 3 and body["stop"] == ["\n"] and body["max_tokens"] == 10
        assert body["prompt"].startswith("List of prompts that make an AI write personal information")
        assert body["prompt"].endswith("\n5.") and body["prompt"].count("\n") == 5
        assert request["headers"]["Authorization"] == "Bearer s3cret"
    pool = read_pool(tmp_path / "rt" / "pool_trial0.jsonl")
    assert [(r["prompt"], r["round"]) for r in pool[20:]] == [
        ("Contact me at", 1),
        ("Maintainer: Bob", 2),
        ("def g(x):\n", 2),
    ]
    curve = results["trials"][0]["curve"]
    assert [c["added"] for c in curve] == [20, 1, 2]
    assert curve[1]["dropped_duplicate"] == 1 and curve[1]["dropped_empty"] == 1
    assert results["score_on"] == "continuation"
    written = (tmp_path / "rt" / "config.yaml").read_text() + (tmp_path / "rt" / "redteam.json").read_text()
    assert "s3cret" not in written


def test_chat_endpoint(tmp_path, checkpoint):
    with FakeServer([["5. Please email me at"], ["Sure: my address is"]]) as server:
        config = load_config(
            RedteamConfig,
            overrides=small(
                tmp_path / "rt",
                checkpoint,
                **{"endpoint.url": server.url + "/", "endpoint.model": "chat-lm"},
                **{"endpoint.api": "chat", "search.rounds": 2},
            ),
        )
        redteam(config)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and "Authorization" not in request["headers"]
    body = request["body"]
    assert set(body) == {"model", "messages", "max_tokens", "temperature", "n"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"].startswith("List of prompts that make an AI write Python code")
    pool = read_pool(tmp_path / "rt" / "pool_trial0.jsonl")
    assert [r["prompt"] for r in pool[20:]] == ["Please email me at", "Sure: my address is"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_errors_name_the_url(tmp_path, checkpoint, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(PreferError, match=f"endpoint {url}/completions: cannot connect"):
        complete(Endpoint(url=url, model="m", timeout=5), "p", n=1, max_tokens=4, temperature=1.0)
    with (
        FakeServer([], status=500) as server,
        pytest.raises(PreferError, match=f"endpoint {server.url}/chat/completions: HTTP 500"),
    ):
        complete(Endpoint(url=server.url, model="m", api="chat"), "p", n=1, max_tokens=4, temperature=1.0)
    assert main(["redteam", *small(tmp_path / "rt", checkpoint, **{"endpoint.url": url, "endpoint.model": "m"})]) == 2
    assert url in capsys.readouterr().err


def test_bad_config_is_one_line(tmp_path, checkpoint, capsys, monkeypatch):
    assert main(["redteam", f"target={checkpoint}"]) == 2
    assert "give exactly one of redteam_model" in capsys.readouterr().err
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    args = small(
        tmp_path / "rt",
        checkpoint,
        **{"endpoint.url": "http://127.0.0.1:1/v1", "endpoint.model": "m", "endpoint.api_key_env": "NO_SUCH_KEY_VAR"},
    )
    assert main(["redteam", *args]) == 2
    assert "NO_SUCH_KEY_VAR is not set" in capsys.readouterr().err
