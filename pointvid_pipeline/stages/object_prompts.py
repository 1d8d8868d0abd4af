"""Stage `object_prompts`: name the main moving objects of a clip from its caption (paper App. A).

The paper asks an LLM (LMDeploy) for the objects, e.g. "A man swinging a baseball bat in a
studio" -> {man, baseball}. The cpu profile uses a deterministic lexical extractor instead:
phrases of the caption matched against a vocabulary kept in `assets/vocabulary/objects.json`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pointvid_pipeline.clip import strip_caption_tags
from pointvid_pipeline.rejections import RejectionReason, SampleRejected

VOCABULARY_PATH = Path(__file__).resolve().parents[2] / "assets" / "vocabulary" / "objects.json"


@dataclass(frozen=True)
class ExtractedObjects:
    """Object names for one caption (lower-case, de-duplicated, in caption order) and who named them.

    `source` is empty when the backend itself answered, or says what stood in for it, e.g.
    "lexical@vocabulary-1a2b3c4d (fallback: answer not grounded in the caption)".
    """

    names: list[str]
    source: str = ""


class ObjectExtractor(Protocol):
    name: str
    version: str

    def setup(self) -> None: ...

    def extract(self, captions: list[str]) -> list[ExtractedObjects]: ...


class LexicalObjectExtractor:
    """Longest-phrase-first vocabulary matching on word boundaries; plurals map to one name."""

    name = "lexical"

    def __init__(self, vocabulary_path: Path = VOCABULARY_PATH):
        self.vocabulary_path = vocabulary_path
        self._pattern: re.Pattern | None = None
        self._canonical: dict[str, str] = {}
        self.version = ""

    def setup(self) -> None:
        raw = self.vocabulary_path.read_bytes()
        vocabulary = {k: v for k, v in json.loads(raw).items() if not k.startswith("_")}
        self._canonical = {phrase.lower(): name for name, phrases in vocabulary.items() for phrase in [name, *phrases]}
        phrases = sorted(self._canonical, key=len, reverse=True)
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in phrases) + r")\b")
        self.version = f"vocabulary-{hashlib.sha1(raw).hexdigest()[:8]}"

    def extract(self, captions: list[str]) -> list[ExtractedObjects]:
        if self._pattern is None:
            self.setup()
        return [ExtractedObjects(self._extract_one(caption)) for caption in captions]

    def _extract_one(self, caption: str) -> list[str]:
        text = strip_caption_tags(caption).lower()
        names = [self._canonical[m.group(1)] for m in self._pattern.finditer(text)]
        return list(dict.fromkeys(names))


def objects_for_caption(objects: list[str]) -> list[str]:
    """The stage's acceptance rule: a caption that names no object cannot be segmented."""
    if not objects:
        raise SampleRejected(RejectionReason.no_object_in_caption, "the extractor found no object name")
    return objects
