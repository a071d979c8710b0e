"""The explainer/judge models: the HTTP client against a local server, the answer cache, the local model's readings."""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from anatomist.interpret import autointerp as ai
from anatomist.interpret.llm import (
    CachedModel,
    Chat,
    HTTPModel,
    LanguageModel,
    LLMError,
    LocalModel,
    ResponseCache,
    chat,
)
from anatomist.nets.assets import LoadedModel


class Server:
    """An OpenAI-compatible stand-in: replies by what the last message says ("slow", "malformed", "notjson",
    "busy-once"), records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.busy_left = 1
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body, dict(self.headers)))
                status, reply = outer.reply(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up waiting
                    self.wfile.write(reply if isinstance(reply, bytes) else json.dumps(reply).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        said = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        if "slow" in said:
            time.sleep(1.0)
        if "malformed" in said:
            return 200, {"choices": []}
        if "notjson" in said:
            return 200, b"<html>oops</html>"
        if "busy-once" in said and self.busy_left:
            self.busy_left -= 1
            return 503, {"error": "busy"}
        if body.get("logprobs") is True:
            top = [{"token": " Yes", "logprob": -0.25}, {"token": "No", "logprob": -1.5}]
            return 200, {"choices": [{"logprobs": {"content": [{"token": " Yes", "top_logprobs": top}]}}]}
        if path.endswith("/chat/completions"):
            return 200, {"choices": [{"message": {"role": "assistant", "content": f" echo: {said} "}}]}
        return 200, {"choices": [{"text": f"text: {said}"}]}


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_http_chat_reply_body_and_api_key(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    lm = HTTPModel(server.url, "judge-1", api_key_env="TEST_LLM_KEY")
    assert lm.complete([chat("hello", system="be brief")], 7) == ["echo: hello"]
    path, body, headers = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body == {"model": "judge-1", "max_tokens": 7, "temperature": 0,
                    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]}
    assert headers["Authorization"] == "Bearer sk-test"


def test_http_completions_endpoint_flattens_the_chat(server: Server) -> None:
    lm = HTTPModel(server.url, "m", endpoint="completions")
    assert lm.complete([chat("hi there")], 3) == ["text: User: hi there\n\nAssistant:"]
    path, body, _ = server.requests[0]
    assert path == "/v1/completions" and body["prompt"].endswith("Assistant:")


def test_http_choice_logprobs_from_top_logprobs(server: Server) -> None:
    lp = HTTPModel(server.url, "m").choice_logprobs([chat("judge this")], ["Yes", "No", "Maybe"])
    assert lp == [[-0.25, -1.5, -math.inf]]  # " Yes" matches "Yes"; a choice not among the top gets -inf
    assert server.requests[0][1]["logprobs"] is True and server.requests[0][1]["max_tokens"] == 1


def test_http_retries_a_busy_server(server: Server) -> None:
    lm = HTTPModel(server.url, "m", retries=2, backoff_s=0.01)
    assert lm.complete([chat("busy-once")], 5) == ["echo: busy-once"]
    assert len(server.requests) == 2


def test_http_timeout_is_a_clear_error_and_keeps_finished_work(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    lm = CachedModel(HTTPModel(server.url, "m", timeout_s=0.2, retries=1, backoff_s=0.01), ResponseCache(path))
    with pytest.raises(LLMError) as err:
        lm.complete([chat("first"), chat("slow one"), chat("never asked")], 5)
    message = str(err.value)
    assert f"{server.url}/chat/completions" in message and "no reply within 0.2 s (2 tries)" in message
    assert str(path) in message
    assert len(server.requests) == 3  # first, then the slow one twice; the third was never sent
    again = CachedModel(HTTPModel(server.url, "m"), ResponseCache(path))
    assert again.complete([chat("first")], 5) == ["echo: first"]
    assert again.asked == 0 and len(server.requests) == 3  # answered from the file


@pytest.mark.parametrize("said, why", [("malformed", "no choices[0].message.content"), ("notjson", "not JSON")])
def test_http_malformed_reply_names_the_url(server: Server, said: str, why: str) -> None:
    with pytest.raises(LLMError) as err:
        HTTPModel(server.url, "m", retries=0).complete([chat(said)], 5)
    assert f"{server.url}/chat/completions: malformed reply ({why}" in str(err.value)


def test_http_unreachable_server_names_the_url() -> None:
    with pytest.raises(LLMError, match=r"http://127\.0\.0\.1:9/v1/chat/completions: unreachable"):
        HTTPModel("http://127.0.0.1:9/v1", "m", retries=0, timeout_s=2).complete([chat("x")], 5)


def test_missing_api_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(LLMError.__mro__[1], match="NO_SUCH_KEY_VAR"):
        HTTPModel("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_KEY_VAR")


class Counting(LanguageModel):
    """Answers 'reply to <prompt>' and records every prompt it was asked."""

    id = "counting"
    batch_size = 2
    can_score_choices = True

    def __init__(self) -> None:
        self.seen: list[str] = []

    def complete(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        self.seen += [p[-1]["content"] for p in prompts]
        return [f"reply to {p[-1]['content']} ({max_tokens})" for p in prompts]

    def choice_logprobs(self, prompts: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        self.seen += [p[-1]["content"] for p in prompts]
        return [[-0.5, -math.inf] for _ in prompts]


def test_cache_never_asks_twice(tmp_path: Path) -> None:
    inner = Counting()
    lm = CachedModel(inner, ResponseCache(tmp_path / "c.jsonl"))
    a, b = chat("a"), chat("b")
    assert lm.complete([a, b, a], 5) == ["reply to a (5)", "reply to b (5)", "reply to a (5)"]
    assert inner.seen == ["a", "b"]
    lm.complete([b, a], 5)
    assert inner.seen == ["a", "b"]
    lm.complete([a], 6)  # other parameters: another question
    assert inner.seen == ["a", "b", "a"]
    assert lm.choice_logprobs([a], ["Yes", "No"]) == [[-0.5, -math.inf]]  # -inf survives the JSON file
    fresh = CachedModel(inner, ResponseCache(tmp_path / "c.jsonl"))
    assert fresh.choice_logprobs([a], ["Yes", "No"]) == [[-0.5, -math.inf]]
    assert fresh.complete([a, b], 5) == ["reply to a (5)", "reply to b (5)"]
    assert inner.seen == ["a", "b", "a", "a"] and fresh.asked == 0


def test_cache_skips_a_torn_last_line_and_appends_after_it(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"key": "k1", "value": "one"}\n{"key": "k2", "val')  # killed mid-write
    cache = ResponseCache(path)
    assert cache.skipped == 1 and cache.get("k1") == "one" and "k2" not in cache
    cache.put("k3", "three")
    again = ResponseCache(path)
    assert again.get("k3") == "three" and again.skipped == 1


# ---------------------------------------------------------------------------------------------------------
# the local model's readings, on a fake network with known logits


A = np.array([0.3, -1.0, 2.0, 0.0, 1.0, -2.0, 0.5, 0.0, 1.5, -0.5])  # digit logits after a tab
B = np.array([5.0, 0, 0, 0, 0, 0, 0, 0, 0, 0])  # everywhere else: a different expectation, to catch a misplaced read


class FakeLM(nn.Module):
    """Logits over the vocabulary: the digit tokens get A after a tab token, B elsewhere; every other token -1e4."""

    def __init__(self, vocab: int, digits: list[int], tab: int, yes: int, no: int) -> None:
        super().__init__()
        self.vocab, self.digits, self.tab, self.yes, self.no = vocab, digits, tab, yes, no
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        logits = torch.full((*input_ids.shape, self.vocab), -1e4)
        after_tab = (input_ids == self.tab)[..., None]
        logits[..., self.digits] = torch.where(after_tab, torch.tensor(A).float(), torch.tensor(B).float())
        logits[..., self.yes], logits[..., self.no] = 1.0, 0.0
        return SimpleNamespace(logits=logits)


def test_local_simulator_reads_the_exact_expected_digit_after_each_token(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    ids = {s: tok(s, add_special_tokens=False)["input_ids"][0] for s in [*map(str, range(10)), "\t", "Yes", "No"]}
    fake = FakeLM(len(tok), [ids[str(d)] for d in range(10)], ids["\t"], ids["Yes"], ids["No"])
    lm = LocalModel(fake, tok, "fake", batch_size=2)
    words = [" The", " cat", " sat", " on", " the", " mat"]
    excerpts = [ai.Excerpt([], words, np.zeros(6)), ai.Excerpt([], words[:3], np.zeros(3))]
    predicted = ai.simulate(lm, "cats", excerpts)
    p = np.exp(A) / np.exp(A).sum()
    want = float(sum(d * p[d] for d in range(10)))  # the expected digit under A, by hand
    assert [len(x) for x in predicted] == [6, 3]
    np.testing.assert_allclose(np.concatenate(predicted), want, rtol=1e-5)
    # choices: P(Yes) = e / (e + 1) after any prompt
    lp = lm.choice_logprobs([chat("is it?"), chat("a longer question, padded differently?")], ["Yes", "No"])
    np.testing.assert_allclose(ai.yes_probability(np.array(lp)), math.e / (math.e + 1), rtol=1e-5)


def test_local_model_refuses_multi_token_choices(smollm2: LoadedModel) -> None:
    lm = LocalModel(smollm2.model, smollm2.tokenizer, "smollm2")
    with pytest.raises(LLMError.__mro__[1], match="'10' is 2 tokens"):
        lm.choice_ids(["1", "10"])


def test_local_generation_batched_equals_one_by_one(smollm2: LoadedModel) -> None:
    """Left padding must not change greedy replies: a batch of prompts of different lengths, and each alone."""
    lm = LocalModel(smollm2.model, smollm2.tokenizer, "smollm2", batch_size=2)
    prompts = [chat("Name a colour."), chat("Write the number after four, as a word, and nothing else.")]
    together = lm.complete(prompts, 4)
    assert together == [lm.complete([p], 4)[0] for p in prompts]
    assert all(isinstance(t, str) and t for t in together)
