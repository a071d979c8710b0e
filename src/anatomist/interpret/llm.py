"""Language models that explain and judge features: one small interface, a local model, an HTTP server, a cache.

Automated interpretability (Bills et al. 2023; Cunningham et al. 2023; EleutherAI's delphi) asks a language model
to explain a feature from its activating contexts and then to judge the explanation. What it needs of a model:

- `complete(prompts, max_tokens)`: greedy replies to chat prompts (lists of {"role", "content"} messages);
- `choice_logprobs(prompts, choices)` (where `can_score_choices`): the next-token log-probability of each candidate
  string after each prompt (a Yes/No judge reads P(Yes) instead of parsing text);
- `position_logprobs(items, choices)` (where `can_score_positions`): a prompt whose reply is teacher-forced as a
  list of parts, and the log-probability of each candidate as the token right after every part, in ONE forward
  (the simulator reads a distribution over the digits after each token of a context this way).

Implementations: `LocalModel` (a `transformers` causal LM with its chat template, batched, greedy: all three),
`HTTPModel` (an OpenAI-compatible server, `/v1/chat/completions` or `/v1/completions`, stdlib `urllib`, timeout and
retries with backoff: replies and top-k choice log-probabilities) and `CachedModel`, which wraps either so that no
prompt is ever asked twice: every answer is appended to a JSON-lines file as soon as it arrives (a crash keeps
all finished work; a rerun asks only what is missing).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from anatomist.core.config import Config
from anatomist.core.errors import AnatomistError
from anatomist.core.io import dumps
from anatomist.core.paths import cache_dir

Chat = Sequence[Mapping[str, str]]
PositionItem = tuple[Chat, Sequence[str]]  # a prompt and the parts its reply is teacher-forced with
RETRY_STATUS = {408, 429, 500, 502, 503, 504}  # worth asking again; other HTTP errors are the request's fault


class LLMError(AnatomistError):
    """A language model could not answer (timeout, unreachable server, malformed reply)."""


def chat(user: str, system: str | None = None) -> list[dict[str, str]]:
    """A chat prompt: an optional system message and one user message."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


class LanguageModel(ABC):
    """What autointerp asks of an explainer or judge; `id` names it in cache keys."""

    id: str = ""
    batch_size: int = 1
    can_score_choices: bool = False
    can_score_positions: bool = False

    @abstractmethod
    def complete(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        """The greedy reply to each prompt, at most `max_tokens` tokens."""

    def choice_logprobs(self, prompts: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        """[prompt][choice]: log P(first reply token is `choice`); -inf where the model gives it no probability."""
        raise LLMError(f"{self.id} cannot score choices; use a judge that can, or one that answers in text")

    def position_logprobs(self, items: Sequence[PositionItem], choices: Sequence[str]) -> list[list[list[float]]]:
        """[item][part][choice]: log P(choice) as the token right after each part of the teacher-forced reply."""
        raise LLMError(f"{self.id} cannot read teacher-forced positions; the simulator falls back to text replies")


# ---------------------------------------------------------------------------------------------------------
# the cache


def cache_key(model: str, call: str, prompt: Any, params: Mapping[str, Any]) -> str:
    blob = json.dumps({"model": model, "call": call, "prompt": prompt, "params": dict(params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """Answers by key, in memory and appended to a JSON-lines file (None: memory only).

    Each answer is one `os.write` of one line on an O_APPEND descriptor, so a crash loses at most the line being
    written; a torn last line is skipped when the file is read back (and cut off with a newline before appending).
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.answers: dict[str, Any] = {}
        self.skipped = 0  # unreadable lines (a write cut short)
        if self.path is not None and self.path.is_file():
            self._read(self.path)

    def _read(self, path: Path) -> None:
        raw = path.read_bytes()
        for line in raw.splitlines():
            try:
                rec = json.loads(line)
                self.answers[rec["key"]] = rec["value"]
            except (ValueError, KeyError, TypeError):
                self.skipped += 1
        if raw and not raw.endswith(b"\n"):
            self._append(b"\n")

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def __len__(self) -> int:
        return len(self.answers)

    def get(self, key: str) -> Any:
        return self.answers[key]

    def put(self, key: str, value: Any) -> None:
        self.answers[key] = value
        if self.path is not None:
            self._append((dumps({"key": key, "value": value}) + "\n").encode())

    def _append(self, data: bytes) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def _finite_or_none(x: Any) -> Any:
    """Log-probabilities as JSON: -inf (no probability) is stored as null."""
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return None if x is None or math.isinf(x) else float(x)


def _none_to_neg_inf(x: Any) -> Any:
    if isinstance(x, list):
        return [_none_to_neg_inf(v) for v in x]
    return -math.inf if x is None else float(x)


class CachedModel(LanguageModel):
    """`inner` behind a `ResponseCache`: a prompt already answered (same model, call and parameters) is never asked
    again, and answers are saved as they arrive, in batches of the inner model's size."""

    def __init__(self, inner: LanguageModel, cache: ResponseCache) -> None:
        self.inner, self.cache = inner, cache
        self.id, self.batch_size = inner.id, inner.batch_size
        self.can_score_choices, self.can_score_positions = inner.can_score_choices, inner.can_score_positions
        self.asked = 0  # prompts sent to the inner model by this wrapper

    def _through(self, call: str, prompts: Sequence[Any], params: Mapping[str, Any],
                 ask: Callable[[list[Any]], list[Any]]) -> list[Any]:
        keys = [cache_key(self.id, call, _plain(p), params) for p in prompts]
        first: dict[str, int] = {}  # each missing key once, at its first prompt
        for i, k in enumerate(keys):
            if k not in self.cache:
                first.setdefault(k, i)
        todo = list(first.items())
        for start in range(0, len(todo), max(self.batch_size, 1)):
            part = todo[start : start + max(self.batch_size, 1)]
            try:
                answers = ask([prompts[i] for _, i in part])
            except AnatomistError as e:
                where = f"kept in {self.cache.path}" if self.cache.path else "kept in memory"
                raise LLMError(f"{e} ({len(self.cache)} answers so far {where}; a rerun asks only the rest)") from e
            self.asked += len(part)
            for (key, _), answer in zip(part, answers, strict=True):
                self.cache.put(key, answer)
        return [self.cache.get(k) for k in keys]

    def complete(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        return [str(a) for a in self._through("complete", prompts, {"max_tokens": max_tokens},
                                              lambda ps: self.inner.complete(ps, max_tokens))]

    def choice_logprobs(self, prompts: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        got = self._through("choices", prompts, {"choices": list(choices)},
                            lambda ps: _finite_or_none(self.inner.choice_logprobs(ps, choices)))
        return [_none_to_neg_inf(a) for a in got]

    def position_logprobs(self, items: Sequence[PositionItem], choices: Sequence[str]) -> list[list[list[float]]]:
        got = self._through("positions", items, {"choices": list(choices)},
                            lambda its: _finite_or_none(self.inner.position_logprobs(its, choices)))
        return [_none_to_neg_inf(a) for a in got]


def _plain(prompt: Any) -> Any:
    """A prompt as JSON-able lists and dicts (for its cache key)."""
    if isinstance(prompt, Mapping):
        return {str(k): _plain(v) for k, v in prompt.items()}
    if isinstance(prompt, list | tuple):
        return [_plain(v) for v in prompt]
    return prompt


# ---------------------------------------------------------------------------------------------------------
# a local transformers model


class LocalModel(LanguageModel):
    """A causal LM with a chat template (default: the packaged SmolLM2-135M-Instruct), run greedily in batches."""

    can_score_choices = True
    can_score_positions = True

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, batch_size: int = 8) -> None:
        self.model, self.tokenizer, self.id, self.batch_size = model, tokenizer, name, batch_size
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)

    @classmethod
    def load(cls, name: str = "smollm2", batch_size: int = 8, device: str = "cpu") -> LocalModel:
        from anatomist.nets.assets import load_model

        loaded = load_model(name, device=device)
        if loaded.tokenizer is None or getattr(loaded.tokenizer, "chat_template", None) is None:
            raise AnatomistError(f"model '{name}' has no tokenizer with a chat template: it cannot explain or judge")
        return cls(loaded.model, loaded.tokenizer, name, batch_size)

    def render(self, prompt: Chat) -> str:
        """The prompt as the model reads it: its chat template, ready for the assistant's reply."""
        return str(self.tokenizer.apply_chat_template([dict(m) for m in prompt], tokenize=False,
                                                      add_generation_prompt=True))

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def choice_ids(self, choices: Sequence[str]) -> list[int]:
        """The one token of each candidate string; a candidate of several tokens cannot be read in one step."""
        ids = []
        for c in choices:
            toks = self._ids(c)
            if len(toks) != 1:
                raise AnatomistError(f"{self.id}: candidate {c!r} is {len(toks)} tokens; each must be exactly one")
            ids.append(toks[0])
        return ids

    def _padded(self, rows: Sequence[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [n, max_len] and attention mask, padded on the left (to generate) or the right (to read)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span] = torch.tensor(r, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask

    @torch.no_grad()
    def _logprobs(self, rows: Sequence[list[int]]) -> torch.Tensor:
        """Log-softmax over the vocabulary at every position of right-padded rows: [n, max_len, vocab]."""
        ids, mask = self._padded(rows, left=False)
        dev = next(self.model.parameters(), torch.empty(0)).device
        logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    @torch.no_grad()
    def complete(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        out: list[str] = []
        for batch in _chunks(prompts, self.batch_size):
            ids, mask = self._padded([self._ids(self.render(p)) for p in batch], left=True)
            dev = next(self.model.parameters(), torch.empty(0)).device
            gen = self.model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_tokens,
                                      do_sample=False, pad_token_id=self.pad_id)  # type: ignore[operator]
            out += [str(self.tokenizer.decode(g[ids.shape[1]:], skip_special_tokens=True)).strip() for g in gen]
        return out

    def choice_logprobs(self, prompts: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        want = self.choice_ids(choices)
        out: list[list[float]] = []
        for batch in _chunks(prompts, self.batch_size):
            rows = [self._ids(self.render(p)) for p in batch]
            lp = self._logprobs(rows)
            out += [lp[i, len(r) - 1, want].tolist() for i, r in enumerate(rows)]
        return out

    def _teacher_forced(self, prompt: Chat, parts: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of the prompt followed by the parts, and the index of the token that ends each part."""
        prefix = self.render(prompt)
        text = prefix + "".join(parts)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = {int(e): j for j, (s, e) in enumerate(enc["offset_mapping"]) if e > s}
        at, bound = [], len(prefix)
        for k, part in enumerate(parts):
            bound += len(part)
            if bound not in ends:
                raise AnatomistError(f"{self.id}: part {k} ({part!r}) ends inside a token; its reading has no "
                                     "position of its own (end each part where the tokenizer splits, e.g. a tab)")
            at.append(ends[bound])
        return list(enc["input_ids"]), at

    def position_logprobs(self, items: Sequence[PositionItem], choices: Sequence[str]) -> list[list[list[float]]]:
        want = self.choice_ids(choices)
        out: list[list[list[float]]] = []
        for batch in _chunks(items, self.batch_size):
            forced = [self._teacher_forced(p, parts) for p, parts in batch]
            lp = self._logprobs([ids for ids, _ in forced])
            out += [lp[i][at][:, want].tolist() for i, (_, at) in enumerate(forced)]
        return out


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + max(size, 1)]


# ---------------------------------------------------------------------------------------------------------
# an OpenAI-compatible server


def flatten(prompt: Chat) -> str:
    """A chat as one text prompt, for `/v1/completions`."""
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in prompt]
    return "\n\n".join([*turns, "Assistant:"])


def _field(doc: Any, path: Sequence[str | int], url: str) -> Any:
    """doc[path[0]][path[1]]...; a reply without it is malformed, and the error names the URL and the field."""
    node = doc
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            name = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")
            raise LLMError(f"{url}: malformed reply (no {name}): {json.dumps(doc)[:300]}") from None
    return node


class HTTPModel(LanguageModel):
    """A model served behind an OpenAI-compatible API (vLLM, llama.cpp, OpenAI, ...), asked one prompt at a time."""

    can_score_choices = True  # from the reply's top log-probabilities (a choice outside them gets -inf)

    def __init__(self, base_url: str, model: str, *, endpoint: Literal["chat", "completions"] = "chat",
                 api_key_env: str | None = None, timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0,
                 top_logprobs: int = 20) -> None:
        self.base_url, self.model, self.endpoint = base_url.rstrip("/"), model, endpoint
        self.id = f"{model}@{self.base_url}/{endpoint}"
        self.timeout_s, self.retries, self.backoff_s, self.top_logprobs = timeout_s, retries, backoff_s, top_logprobs
        self.api_key = None
        if api_key_env is not None:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise AnatomistError(f"the API key variable {api_key_env} (named by api_key_env) is not set")

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"

    def _request(self, body: Mapping[str, Any]) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")

    def _post(self, body: Mapping[str, Any]) -> Any:
        """The reply's JSON; transient failures (timeouts, refused connections, 429/5xx) are retried with
        exponential backoff, and the last one raises an error naming the URL."""
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(self._request(body), timeout=self.timeout_s) as reply:
                    raw = reply.read()
                break
            except urllib.error.HTTPError as e:
                if e.code not in RETRY_STATUS or attempt == self.retries:
                    detail = e.read()[:300].decode(errors="replace")
                    raise LLMError(f"POST {self.url}: HTTP {e.code} {e.reason}: {detail}") from None
            except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
                if attempt == self.retries:
                    raise LLMError(self._failure(e)) from None
            time.sleep(self.backoff_s * 2**attempt)
        try:
            return json.loads(raw)
        except ValueError:
            raise LLMError(f"{self.url}: malformed reply (not JSON): {raw[:300]!r}") from None

    def _failure(self, e: BaseException) -> str:
        reason = getattr(e, "reason", e)
        tries = f"{self.retries + 1} tries"
        if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError):
            return f"POST {self.url}: no reply within {self.timeout_s:g} s ({tries}); is the server overloaded?"
        return f"POST {self.url}: unreachable ({reason}; {tries})"

    def _body(self, prompt: Chat, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0}
        if self.endpoint == "chat":
            body["messages"] = [dict(m) for m in prompt]
        else:
            body["prompt"] = flatten(prompt)
        return body

    def complete(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        path: list[str | int] = ["choices", 0, "message", "content"] if self.endpoint == "chat" else ["choices", 0,
                                                                                                      "text"]
        out = []
        for p in prompts:
            text = _field(self._post(self._body(p, max_tokens)), path, self.url)
            if not isinstance(text, str):
                raise LLMError(f"{self.url}: malformed reply ({'.'.join(map(str, path))} is not text)")
            out.append(text.strip())
        return out

    def _top(self, prompt: Chat) -> dict[str, float]:
        """The first reply token's top log-probabilities, {token: logprob}."""
        body = self._body(prompt, 1)
        if self.endpoint == "chat":
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
            entries = _field(self._post(body), ["choices", 0, "logprobs", "content", 0, "top_logprobs"], self.url)
            try:
                return {str(e["token"]): float(e["logprob"]) for e in entries}
            except (KeyError, TypeError, ValueError):
                raise LLMError(f"{self.url}: malformed reply (top_logprobs entries): {entries!r:.300}") from None
        body["logprobs"] = self.top_logprobs
        top = _field(self._post(body), ["choices", 0, "logprobs", "top_logprobs", 0], self.url)
        if not isinstance(top, Mapping):
            raise LLMError(f"{self.url}: malformed reply (top_logprobs[0] is not a mapping)")
        return {str(k): float(v) for k, v in top.items()}

    def choice_logprobs(self, prompts: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        out = []
        for p in prompts:
            top = self._top(p)
            # servers differ on a leading space ("Yes" vs " Yes"): a choice takes its best spelling
            out.append([max((v for k, v in top.items() if k.strip() == c.strip()), default=-math.inf)
                        for c in choices])
        return out


# ---------------------------------------------------------------------------------------------------------
# from a config


class LLMSpec(Config):
    """Which language model explains or judges: a local model by name, or a model behind an HTTP endpoint."""

    model: str = Field("smollm2", description="local: a model name (smollm2, a local HF folder); HTTP: the served "
                                              "model's name")
    url: str | None = Field(None, description="base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1 "
                                              "(null: run `model` locally)")
    endpoint: Literal["chat", "completions"] = Field("chat", description="HTTP: /chat/completions or /completions")
    api_key_env: str | None = Field(None, description="HTTP: name of the environment variable holding the API key")
    timeout_s: float = Field(60.0, gt=0, description="HTTP: seconds to wait for one reply")
    retries: int = Field(3, ge=0, description="HTTP: further tries after a timeout or a 429/5xx reply (backoff 1, "
                                              "2, 4... s)")
    batch_size: int = Field(8, gt=0, description="local: prompts per forward")
    device: str = Field("cpu", description="local: cpu, cuda or auto")


def make_model(spec: LLMSpec, cache: str | Path | None = "auto") -> CachedModel:
    """The model a spec names, behind a response cache (auto: $ANATOMIST_CACHE/llm/responses.jsonl; None: memory)."""
    inner: LanguageModel
    if spec.url is None:
        inner = LocalModel.load(spec.model, spec.batch_size, spec.device)
    else:
        inner = HTTPModel(spec.url, spec.model, endpoint=spec.endpoint, api_key_env=spec.api_key_env,
                          timeout_s=spec.timeout_s, retries=spec.retries)
    path = cache_dir("llm") / "responses.jsonl" if cache == "auto" else cache
    return CachedModel(inner, ResponseCache(path))
