"""LLM object extraction: answer checks, the HTTP backend against a real local server, the transformers backend on a tiny Qwen2."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from local_servers import http_server
from tiny_qwen2 import save_tiny_qwen2

from pointvid_pipeline.backends.llm import (
    MAX_ANSWER_TOKENS,
    PROMPT_PATH,
    UnusableAnswer,
    grounded_objects,
)
from pointvid_pipeline.backends.registry import create_backend
from pointvid_pipeline.rejections import BackendUnavailable
from pointvid_pipeline.stages.object_prompts import LexicalObjectExtractor

MODEL = "recorded-llm"
API_KEY = "sk-test-0123456789"

# caption -> what the recorded server does: an answer string, "sleep", "500", or "500-then-answer"
SCRIPT = {
    "A man swinging a baseball bat in a studio": '{"objects": ["man", "baseball bat"]}',
    "Two dogs chase a red ball across the lawn": "Sure! ```json\n{\"objects\": [\"Dogs\", \"a red ball\", \"dogs\"]}\n```",
    "A woman rides a horse along the beach": '{"objects": ["woman", "horse", "saddle"]}',
    "A cat jumps onto a sofa": "cat, sofa",
    "A man juggles a soccer ball": "sleep",
    "A boy throws a frisbee to a dog": "500-then-answer",
    "A girl kicks a ball": "500",
}
LATE_ANSWER = '{"objects": ["boy", "frisbee", "dog"]}'


class RecordedEndpoint:
    """A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions shape, answering from SCRIPT."""

    def __init__(self, sleep_seconds: float):
        self.sleep_seconds = sleep_seconds
        self.requests: list[dict] = []
        self.failures_left = {caption: 1 for caption, act in SCRIPT.items() if act == "500-then-answer"}
        self.lock = threading.Lock()

    def handler(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                endpoint.record(self, None)
                if self.path == "/v1/models":
                    self.reply(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                else:
                    self.reply(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.record(self, body)
                caption = caption_of(body)
                act = SCRIPT[caption]
                if act == "sleep":
                    time.sleep(endpoint.sleep_seconds)
                    act = '{"objects": ["man"]}'
                if act == "500-then-answer":
                    with endpoint.lock:
                        failing = endpoint.failures_left[caption] > 0
                        endpoint.failures_left[caption] -= 1
                    act = "500" if failing else LATE_ANSWER
                if act == "500":
                    self.reply(500, {"error": "overloaded"})
                    return
                self.reply(200, {"object": "chat.completion", "model": body["model"], "choices": [{"index": 0, "message": {"role": "assistant", "content": act}, "finish_reason": "stop"}]})

            def reply(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up

        return Handler

    def record(self, handler: BaseHTTPRequestHandler, body: dict | None):
        with self.lock:
            self.requests.append({"method": handler.command, "path": handler.path, "headers": dict(handler.headers), "body": body})

    def posts(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]


def caption_of(body: dict) -> str:
    """The caption in a chat request: the last `Caption:` line (the template's example comes first)."""
    return body["messages"][-1]["content"].split("Caption: ")[-1].split("\n")[0]


@contextmanager
def serve(endpoint: RecordedEndpoint):
    with http_server(endpoint.handler()) as base_url:
        yield f"{base_url}/v1"


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    endpoint = RecordedEndpoint(sleep_seconds=1.0)
    with serve(endpoint) as url:
        monkeypatch.setenv("POINTVID_LLM_ENDPOINT", url)
        monkeypatch.setenv("POINTVID_LLM_MODEL", MODEL)
        monkeypatch.setenv("POINTVID_LLM_API_KEY", API_KEY)
        monkeypatch.setenv("POINTVID_LLM_TIMEOUT", "0.2")
        monkeypatch.setenv("POINTVID_LLM_RETRIES", "2")
        monkeypatch.setenv("POINTVID_LLM_BACKOFF", "0.01")
        monkeypatch.setenv("POINTVID_LLM_CACHE_DIR", str(tmp_path / "cache"))
        yield endpoint, url


@pytest.fixture(scope="module")
def lexical():
    extractor = LexicalObjectExtractor()
    extractor.setup()
    return extractor


def lexical_source(lexical: LexicalObjectExtractor) -> str:
    return f"lexical@{lexical.version} (fallback: "


# ---- answer checks shared by both backends


def test_grounding_keeps_caption_phrases_in_order_without_duplicates():
    caption = "Two puppies chase the boxes past a man holding a baseball bat"
    answer = 'Here you go:\n```json\n{"objects": ["Puppy", " the box ", "puppies", "baseball", "tree", 3, ""]}\n```'
    assert grounded_objects(answer, caption) == ["puppy", "box", "puppies", "baseball"]


def test_grounding_strips_synthetic_tag_and_rejects_unusable_answers():
    assert grounded_objects('{"objects": ["duck"]}', "<synthetic> A yellow duck drops") == ["duck"]
    with pytest.raises(UnusableAnswer, match="malformed"):
        grounded_objects('{"objects": "duck"', "A yellow duck drops")
    with pytest.raises(UnusableAnswer, match="not grounded"):
        grounded_objects('{"objects": ["synthetic", "dragon"]}', "<synthetic> A yellow duck drops")
    with pytest.raises(UnusableAnswer, match="no object"):
        grounded_objects('{"objects": []}', "A yellow duck drops")


# ---- HTTP backend against a real local server


def test_http_backend_answers_checks_and_falls_back_per_caption(recorded, lexical):
    endpoint, _ = recorded
    extractor = create_backend("object_extractor", "llm-http")
    assert extractor.version.startswith(f"{MODEL}+prompt-")
    captions = list(SCRIPT)
    started = time.perf_counter()
    results = dict(zip(captions, extractor.extract(captions)))
    assert time.perf_counter() - started < 5

    assert results["A man swinging a baseball bat in a studio"].names == ["man", "baseball bat"]
    assert results["A man swinging a baseball bat in a studio"].source == ""
    assert results["Two dogs chase a red ball across the lawn"].names == ["dogs", "red ball"]  # fenced JSON, article, duplicate
    assert results["A woman rides a horse along the beach"].names == ["woman", "horse"]  # "saddle" is not in the caption
    assert results["A boy throws a frisbee to a dog"].names == ["boy", "frisbee", "dog"]  # 500, then success on retry
    assert results["A boy throws a frisbee to a dog"].source == ""

    fallbacks = {
        "A cat jumps onto a sofa": "malformed answer",
        "A man juggles a soccer ball": "timed out after 3 attempts",
        "A girl kicks a ball": "HTTP 500 after 3 attempts",
    }
    for caption, reason in fallbacks.items():
        result = results[caption]
        assert result.names == lexical.extract([caption])[0].names
        assert result.source == f"{lexical_source(lexical)}{reason})"

    posts = endpoint.posts()
    per_caption = {c: sum(caption_of(p["body"]) == c for p in posts) for c in captions}
    assert per_caption == {c: {"sleep": 3, "500": 3, "500-then-answer": 2}.get(act, 1) for c, act in SCRIPT.items()}
    body = posts[0]["body"]
    assert body["model"] == MODEL and body["temperature"] == 0
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["objects"] == {"type": "array", "items": {"type": "string"}}
    assert all(r["headers"]["Authorization"] == f"Bearer {API_KEY}" for r in endpoint.requests)


def test_http_backend_caches_answers_without_the_api_key(recorded, tmp_path):
    endpoint, _ = recorded
    extractor = create_backend("object_extractor", "llm-http")
    captions = ["A man swinging a baseball bat in a studio", "A woman rides a horse along the beach", "A girl kicks a ball"]
    first = extractor.extract(captions)
    posts_after_first = len(endpoint.posts())
    assert posts_after_first == 1 + 1 + 3

    again = create_backend("object_extractor", "llm-http").extract(captions[:2])
    assert again == first[:2]
    assert len(endpoint.posts()) == posts_after_first  # answered from the cache

    cache_files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(cache_files) == 2  # failures are not cached: the next run asks again
    for path in cache_files:
        text = path.read_text()
        assert API_KEY not in text and json.loads(text)["model"] == MODEL
    extractor.extract(captions[2:])
    assert len(endpoint.posts()) == posts_after_first + 3


def test_http_backend_takes_the_served_model_when_none_is_named(recorded, monkeypatch):
    monkeypatch.delenv("POINTVID_LLM_MODEL")
    extractor = create_backend("object_extractor", "llm-http")
    assert extractor.model == MODEL
    monkeypatch.setenv("POINTVID_LLM_MODEL", "other-model")
    with pytest.raises(BackendUnavailable, match="other-model"):
        create_backend("object_extractor", "llm-http")


def test_http_backend_unavailable_without_endpoint(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("POINTVID_LLM_ENDPOINT", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("POINTVID_LLM_TIMEOUT", "0.5")
    with pytest.raises(BackendUnavailable, match=f"http://127.0.0.1:{port}/v1/models"):
        create_backend("object_extractor", "llm-http")
    monkeypatch.delenv("POINTVID_LLM_ENDPOINT")
    with pytest.raises(BackendUnavailable, match="POINTVID_LLM_ENDPOINT.*lmdeploy serve api_server"):
        create_backend("object_extractor", "llm-http")


# ---- transformers backend on a tiny random Qwen2


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory):
    return save_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


def test_transformers_backend_end_to_end_falls_back_on_garbage(tiny_qwen2_dir, monkeypatch, lexical):
    monkeypatch.setenv("POINTVID_LLM_LOCAL_MODEL", str(tiny_qwen2_dir))
    monkeypatch.setenv("POINTVID_LLM_BATCH_SIZE", "2")
    monkeypatch.setenv("POINTVID_DEVICE", "cpu")
    extractor = create_backend("object_extractor", "llm-transformers")
    assert extractor.version.startswith(f"{tiny_qwen2_dir.name}-") and "+prompt-" in extractor.version
    captions = ["A man swinging a baseball bat in a studio", "<synthetic> A yellow duck and a small red cube drop onto a checkered floor.", "Dogs run"]

    answers = extractor._generate(captions)  # the raw batched generations behind extract()
    assert len(answers) == 3 and all(a.startswith(extractor.answer_prefix) for a in answers)

    results = extractor.extract(captions)
    assert len(results) == len(captions)
    for caption, result in zip(captions, results):
        assert result.names == lexical.extract([caption])[0].names
        reason = result.source.removeprefix(lexical_source(lexical)).removesuffix(")")
        assert reason in ("malformed answer", "answer not grounded in the caption", "answer names no object"), result.source


def chat_turn(caption_in_prompt: str) -> str:
    """What the tiny model's chat template renders for one caption, plus the pre-filled answer start, by hand."""
    prompt = PROMPT_PATH.read_text().replace("{caption}", caption_in_prompt).strip()
    return f'<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{{"objects": ['


def test_transformers_backend_decodes_exactly_the_scripted_continuation(tiny_qwen2_dir, monkeypatch):
    """generate is scripted: its input must be the chat-templated, pre-filled, left-padded prompts, and
    only the tokens it appends may be decoded into the answer."""
    monkeypatch.setenv("POINTVID_LLM_LOCAL_MODEL", str(tiny_qwen2_dir))
    monkeypatch.setenv("POINTVID_LLM_BATCH_SIZE", "2")
    monkeypatch.setenv("POINTVID_DEVICE", "cpu")
    extractor = create_backend("object_extractor", "llm-transformers")
    tokenizer = extractor._tokenizer
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    script = {  # caption -> (caption as the prompt must show it, scripted continuation)
        "Dogs run": ("Dogs run", '"dogs"]}'),
        "<synthetic> A yellow duck and a small red cube drop onto a checkered floor.":
            ("A yellow duck and a small red cube drop onto a checkered floor.", '"yellow duck", "red cube", "floor"]}'),
        "A man swinging a baseball bat in a studio": ("A man swinging a baseball bat in a studio", '"man", "baseball bat"]}'),
    }
    turn_ids = {caption: tokenizer(chat_turn(shown), add_special_tokens=False)["input_ids"] for caption, (shown, _) in script.items()}
    calls = []

    def scripted_generate(input_ids, attention_mask, **kwargs):
        assert kwargs == {"max_new_tokens": MAX_ANSWER_TOKENS, "do_sample": False, "pad_token_id": pad}
        batch = list(script)[2 * len(calls):2 * len(calls) + 2]
        calls.append(input_ids.shape)
        width = max(len(turn_ids[caption]) for caption in batch)
        new_tokens = []
        for row, caption in enumerate(batch):
            padding = width - len(turn_ids[caption])
            assert input_ids[row].tolist() == [pad] * padding + turn_ids[caption]  # left padding, then the exact turn
            assert attention_mask[row].tolist() == [0] * padding + [1] * len(turn_ids[caption])
            new_tokens.append(tokenizer(script[caption][1], add_special_tokens=False)["input_ids"] + [eos])
        longest = max(map(len, new_tokens))
        appended = torch.tensor([tokens + [pad] * (longest - len(tokens)) for tokens in new_tokens])  # finished rows pad
        return torch.cat([input_ids, appended], dim=1)

    monkeypatch.setattr(extractor._model, "generate", scripted_generate)
    captions = list(script)
    assert extractor._generate(captions[:2]) == [extractor.answer_prefix + script[c][1] for c in captions[:2]]
    calls.clear()
    results = extractor.extract(captions)

    assert [tuple(shape) for shape in calls] == [(2, len(turn_ids[captions[1]])), (1, len(turn_ids[captions[2]]))]
    assert len(turn_ids[captions[0]]) < len(turn_ids[captions[1]])  # the first batch really needs padding
    assert [r.names for r in results] == [["dogs"], ["yellow duck", "red cube", "floor"], ["man", "baseball bat"]]
    assert [r.source for r in results] == ["", "", ""]  # the model's answers, no fallback


def test_transformers_backend_missing_model_names_the_env_var(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-model"
    monkeypatch.setenv("POINTVID_LLM_LOCAL_MODEL", str(missing))
    with pytest.raises(BackendUnavailable, match="POINTVID_LLM_LOCAL_MODEL") as info:
        create_backend("object_extractor", "llm-transformers")
    assert str(missing) in str(info.value) and "huggingface-cli download" in str(info.value)
