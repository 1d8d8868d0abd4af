"""Stage `object_prompts`, paper profile: an LLM names the main moving objects of a caption (App. A).

Two backends share one prompt (`assets/prompts/object_extraction.txt`) and one answer check
(`grounded_objects`): the answer must be JSON `{"objects": [...]}` whose phrases appear in the
caption. A caption whose answer is unusable (malformed, ungrounded, endpoint failing after
retries) gets the lexical extractor's names instead, and the reason is recorded in `source`, so
one bad answer never fails a partition and never passes unnoticed.

- `ChatEndpointObjectExtractor` ("llm-http"): any OpenAI-compatible chat-completions server
  (`lmdeploy serve api_server`, `vllm serve`, ollama), answers cached on disk.
- `TransformersObjectExtractor` ("llm-transformers"): local transformers generation, batched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pointvid_pipeline.clip import strip_caption_tags
from pointvid_pipeline.rejections import BackendUnavailable
from pointvid_pipeline.stages.object_prompts import ExtractedObjects, LexicalObjectExtractor
from pointvid_pipeline.storage.stage_store import atomic_write_json

log = logging.getLogger(__name__)

PROMPT_PATH = Path(__file__).resolve().parents[2] / "assets" / "prompts" / "object_extraction.txt"
MAX_ANSWER_TOKENS = 64
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"objects": {"type": "array", "items": {"type": "string"}}},
    "required": ["objects"],
    "additionalProperties": False,
}
DEFAULT_LOCAL_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
API_KEY_ENV = "POINTVID_LLM_API_KEY"
_ARTICLES = ("a ", "an ", "the ")


class UnusableAnswer(ValueError):
    """The model's answer for one caption cannot be used; the message is the recorded reason."""


class PromptTemplate:
    """The prompt text with a `{caption}` slot; its version is a hash of the file, for cache keys and provenance."""

    def __init__(self, path: Path = PROMPT_PATH):
        raw = path.read_bytes()
        self.text = raw.decode()
        self.version = f"prompt-{hashlib.sha1(raw).hexdigest()[:8]}"

    def render(self, caption: str) -> str:
        return self.text.replace("{caption}", caption).strip()


def grounded_objects(answer: str, caption: str) -> list[str]:
    """The object names an answer gives that the caption supports; raises UnusableAnswer otherwise.

    Accepts bare JSON or a JSON object inside text or code fences. Names are lower-cased,
    stripped of a leading article, de-duplicated in order; a name is kept only when each of its
    words appears in the caption (a plural matches its singular).
    """
    phrases = _answer_objects(answer)
    caption_words = {form for word in _words(strip_caption_tags(caption)) for form in _word_forms(word)}
    names, dropped = [], []
    for phrase in phrases:
        name = " ".join(phrase.lower().split())
        for article in _ARTICLES:
            name = name.removeprefix(article)
        words = _words(name)
        if not words:
            continue
        if all(_word_forms(word) & caption_words for word in words):
            names.append(name)
        else:
            dropped.append(name)
    if dropped:
        log.info("object names not in the caption %r dropped: %s", caption, dropped)
    names = list(dict.fromkeys(names))
    if not names:
        raise UnusableAnswer("answer not grounded in the caption" if dropped else "answer names no object")
    return names


def _answer_objects(answer: str) -> list[str]:
    decoder = json.JSONDecoder()
    for start in [m.start() for m in re.finditer(r"\{", answer)]:
        try:
            value, _ = decoder.raw_decode(answer, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("objects"), list):
            return [item for item in value["objects"] if isinstance(item, str)]
    log.info("answer without a JSON object holding an 'objects' list: %r", answer[:200])
    raise UnusableAnswer("malformed answer")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _word_forms(word: str) -> set[str]:
    """The word and the singulars it may be a plural of (dogs, boxes, puppies); shared forms mean a match."""
    forms = {word}
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
        if word.endswith("es"):
            forms.add(word[:-2])
        if word.endswith("ies"):
            forms.add(word[:-3] + "y")
    return forms


class _LexicalFallback:
    """Stands in for the LLM on one caption and says why in `source`."""

    def __init__(self):
        self.extractor = LexicalObjectExtractor()
        self.extractor.setup()

    def __call__(self, caption: str, reason: str) -> ExtractedObjects:
        (lexical,) = self.extractor.extract([caption])
        return ExtractedObjects(lexical.names, f"{self.extractor.name}@{self.extractor.version} (fallback: {reason})")


def _resolve(caption: str, answer: str | None, failure: str, fallback: _LexicalFallback) -> ExtractedObjects:
    if answer is None:
        return fallback(caption, failure)
    try:
        return ExtractedObjects(grounded_objects(answer, caption))
    except UnusableAnswer as unusable:
        return fallback(caption, str(unusable))


def _default_cache_dir() -> Path:
    return Path(os.environ.get("POINTVID_DATA_DIR", "pointvid_data")) / "cache" / "object_prompts"


class ChatEndpointObjectExtractor:
    """OpenAI-compatible chat-completions endpoint, JSON-schema structured output, temperature 0.

    Requests for one batch run concurrently (the servers batch them); transient failures
    (timeouts, connection errors, HTTP 429/5xx) are retried with exponential backoff whose
    jitter comes from an RNG seeded by the caption, so reruns wait the same. Answers are cached
    by sha256(model, prompt version, caption); the API key is only sent, never stored, logged or
    put into a message.
    """

    name = "llm-http"

    def __init__(
        self,
        endpoint: str,
        model: str = "",
        api_key: str = "",
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
        cache_dir: Path | None = None,
        prompt: PromptTemplate | None = None,
    ):
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.concurrency = concurrency
        self.cache_dir = Path(cache_dir) if cache_dir else _default_cache_dir()
        self.prompt = prompt or PromptTemplate()
        self.version = ""
        self._fallback: _LexicalFallback | None = None

    @classmethod
    def from_env(cls, api_key: str | None = None) -> "ChatEndpointObjectExtractor":
        """`api_key` as Dagster resolved it from its EnvVar; None reads POINTVID_LLM_API_KEY here."""
        env = os.environ
        endpoint = env.get("POINTVID_LLM_ENDPOINT", "")
        if not endpoint:
            raise BackendUnavailable(
                "object_extractor 'llm-http' needs POINTVID_LLM_ENDPOINT, the base URL of an OpenAI-compatible server, "
                f"e.g. start `lmdeploy serve api_server {DEFAULT_LOCAL_MODEL} --server-port 23333` (or `vllm serve "
                f"{DEFAULT_LOCAL_MODEL}`, or ollama) and set POINTVID_LLM_ENDPOINT=http://127.0.0.1:23333/v1"
            )
        cache_dir = env.get("POINTVID_LLM_CACHE_DIR")
        return cls(
            endpoint=endpoint,
            model=env.get("POINTVID_LLM_MODEL", ""),
            api_key=env.get(API_KEY_ENV, "") if api_key is None else api_key,
            timeout=float(env.get("POINTVID_LLM_TIMEOUT", "30")),
            retries=int(env.get("POINTVID_LLM_RETRIES", "3")),
            backoff=float(env.get("POINTVID_LLM_BACKOFF", "1.0")),
            concurrency=int(env.get("POINTVID_LLM_CONCURRENCY", "8")),
            cache_dir=Path(cache_dir) if cache_dir else None,
        )

    def setup(self) -> None:
        """Check the endpoint answers GET /models; without POINTVID_LLM_MODEL use the one model it serves."""
        url = f"{self.endpoint}/models"
        try:
            with urllib.request.urlopen(self._request(url), timeout=self.timeout) as response:
                listing = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise BackendUnavailable(
                f"object_extractor 'llm-http': the endpoint {url} does not answer ({type(exc).__name__}: {exc}); "
                "start an OpenAI-compatible server (e.g. `lmdeploy serve api_server <model>`) or fix POINTVID_LLM_ENDPOINT"
            ) from exc
        served = [m.get("id", "") for m in listing.get("data", []) if isinstance(m, dict)] if isinstance(listing, dict) else []
        if not self.model:
            if len(served) != 1:
                raise BackendUnavailable(f"object_extractor 'llm-http': {url} serves {served}; set POINTVID_LLM_MODEL to one of them")
            self.model = served[0]
        elif served and self.model not in served:
            raise BackendUnavailable(f"object_extractor 'llm-http': {url} does not serve POINTVID_LLM_MODEL={self.model!r} (it serves {served})")
        self.version = f"{self.model}+{self.prompt.version}"
        self._fallback = _LexicalFallback()

    def extract(self, captions: list[str]) -> list[ExtractedObjects]:
        if self._fallback is None:
            self.setup()
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(self._extract_one, captions))

    def _extract_one(self, caption: str) -> ExtractedObjects:
        text = strip_caption_tags(caption)
        key = hashlib.sha256(json.dumps([self.model, self.prompt.version, text]).encode()).hexdigest()
        cache_path = self.cache_dir / key[:2] / f"{key}.json"
        if cache_path.exists():
            answer, failure = json.loads(cache_path.read_text())["answer"], ""
        else:
            answer, failure = self._ask(text, key)
            if answer is not None:
                atomic_write_json(cache_path, {"model": self.model, "prompt_version": self.prompt.version, "caption": text, "answer": answer}, setting="POINTVID_LLM_CACHE_DIR")
        return _resolve(caption, answer, failure, self._fallback)

    def _ask(self, caption: str, key: str) -> tuple[str | None, str]:
        """(answer, "") or (None, why the endpoint gave none after the retries)."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt.render(caption)}],
            "temperature": 0,
            "max_tokens": MAX_ANSWER_TOKENS,
            "response_format": {"type": "json_schema", "json_schema": {"name": "objects", "strict": True, "schema": ANSWER_SCHEMA}},
        }
        request = self._request(f"{self.endpoint}/chat/completions", json.dumps(body).encode())
        jitter = random.Random(key)
        attempts, failure = max(0, self.retries) + 1, ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + jitter.random()))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read())
            except urllib.error.HTTPError as exc:
                failure = f"HTTP {exc.code}"
                if exc.code != 429 and exc.code < 500:
                    return None, self._failed(failure, attempt + 1, caption)
                continue
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                failure = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else f"connection failed ({reason})"
                continue
            except ValueError:
                return None, self._failed("response is not JSON", attempt + 1, caption)
            try:
                return str(payload["choices"][0]["message"]["content"] or ""), ""
            except (KeyError, IndexError, TypeError):
                return None, self._failed("response without choices[0].message.content", attempt + 1, caption)
        return None, self._failed(failure, attempts, caption)

    def _failed(self, failure: str, attempts: int, caption: str) -> str:
        reason = f"{failure} after {attempts} attempt{'s' if attempts > 1 else ''}"
        log.warning("%s/chat/completions: %s for caption %r", self.endpoint, reason, caption)
        return reason

    def _request(self, url: str, data: bytes | None = None) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return urllib.request.Request(url, data=data, headers=headers)


class TransformersObjectExtractor:
    """Local transformers chat model: chat template, greedy decoding, batched with left padding.

    The assistant turn is pre-filled with `{"objects": [` so that even a small instruct model
    answers in the expected JSON form; the answer checked is that prefix plus the generation.
    """

    name = "llm-transformers"
    answer_prefix = '{"objects": ['

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, batch_size: int = 16, prompt: PromptTemplate | None = None):
        self.model_ref = model
        self.batch_size = batch_size
        self.prompt = prompt or PromptTemplate()
        self.version = ""
        self._model = None
        self._tokenizer = None
        self._fallback: _LexicalFallback | None = None

    @classmethod
    def from_env(cls) -> "TransformersObjectExtractor":
        return cls(
            model=os.environ.get("POINTVID_LLM_LOCAL_MODEL", DEFAULT_LOCAL_MODEL),
            batch_size=int(os.environ.get("POINTVID_LLM_BATCH_SIZE", "16")),
        )

    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pointvid_pipeline.backends.torch_runtime import resolve_device, resolve_dtype

        how_to_get = (
            f"set POINTVID_LLM_LOCAL_MODEL to a local folder holding the model and tokenizer, e.g. run "
            f"`huggingface-cli download {DEFAULT_LOCAL_MODEL} --local-dir <folder>` on a machine with internet"
        )
        local = Path(self.model_ref).expanduser()
        is_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", self.model_ref) is not None and not local.exists()
        if not is_hub_id and not local.is_dir():
            raise BackendUnavailable(f"object_extractor 'llm-transformers': POINTVID_LLM_LOCAL_MODEL={self.model_ref!r} is not a folder; {how_to_get}")
        source = self.model_ref if is_hub_id else str(local)
        device = resolve_device()
        try:
            tokenizer = _from_pretrained(AutoTokenizer, source, is_hub_id)
            model = _from_pretrained(AutoModelForCausalLM, source, is_hub_id, dtype=resolve_dtype(device))
        except OSError as exc:
            raise BackendUnavailable(f"object_extractor 'llm-transformers': cannot load {source!r} ({exc}); {how_to_get}") from exc
        if tokenizer.chat_template is None:
            raise BackendUnavailable(f"object_extractor 'llm-transformers': the tokenizer of {source!r} has no chat template; point POINTVID_LLM_LOCAL_MODEL at an instruct/chat model")
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer, self._model = tokenizer, model.to(device).eval()
        if is_hub_id:
            revision = getattr(model.config, "_commit_hash", None)
            self.version = f"{self.model_ref}@{revision[:8]}" if revision else self.model_ref
        else:
            config_hash = hashlib.sha1((local / "config.json").read_bytes()).hexdigest()[:8]
            self.version = f"{local.name}-{config_hash}"
        self.version += f"+{self.prompt.version}"
        self._fallback = _LexicalFallback()

    def extract(self, captions: list[str]) -> list[ExtractedObjects]:
        if self._model is None:
            self.setup()
        answers = []
        for start in range(0, len(captions), self.batch_size):
            answers += self._generate(captions[start : start + self.batch_size])
        return [_resolve(caption, answer, "", self._fallback) for caption, answer in zip(captions, answers)]

    def _generate(self, captions: list[str]) -> list[str]:
        import torch

        tokenizer = self._tokenizer
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": self.prompt.render(strip_caption_tags(c))}], tokenize=False, add_generation_prompt=True)
            + self.answer_prefix
            for c in captions
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._model.device)
        with torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        generated = output[:, inputs["input_ids"].shape[1] :]
        return [self.answer_prefix + text for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]


def _from_pretrained(loader, source: str, is_hub_id: bool, **kwargs):
    """Hub ids: the local HF cache first, so an air-gapped node does not wait on the hub's retries."""
    if is_hub_id:
        try:
            return loader.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError:
            pass
    return loader.from_pretrained(source, **kwargs)
