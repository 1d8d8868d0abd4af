"""Stage `object_prompts`: name the main moving objects of a clip from its caption (paper App. A).

The paper asks an LLM (LMDeploy) for the objects, e.g. "A man swinging a baseball bat in a
studio" -> {man, baseball bat}. The cpu profile (and the paper profile, when an LLM answer is
unusable) uses a deterministic, offline lexical extractor instead: the caption's nouns that a
noun lexicon derived from WordNet 3.0 calls people, animals, plants, artifacts, natural objects or
food, named as the caption names them (singular, collocations such as "traffic light" whole).

The lexicon is a compact file derived once from Debian's `wordnet-base` data
(`assets/vocabulary/object_lexicon.tsv.gz`, about 180 KB, WordNet's licence beside it) rather than
WordNet read at run time: workers and CI then need no system package and every run reads the same
bytes, whose hash is the extractor's version. `pointvid_pipeline/tools/build_object_lexicon.py`
regenerates it and says which senses count as objects.

Without a part-of-speech tagger, a few word-order rules stand in for one: the last noun of a run
is the head ("plastic cups" -> cup, "grass floor" -> nothing, the floor being scenery), a noun
that is also a verb is read as the verb after a pronoun, "to" or a modal, or right after a noun
when it is mostly a verb ("a man watches"), or inflected after a singular noun ("a man saws"), or
uninflected after a plural one ("dogs fly").
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pointvid_pipeline.clip import strip_caption_tags
from pointvid_pipeline.rejections import RejectionReason, SampleRejected

LEXICON_PATH = Path(__file__).resolve().parents[2] / "assets" / "vocabulary" / "object_lexicon.tsv.gz"
LEXICON_NAME = "wordnet-3.0"
MAX_OBJECTS = 8  # a caption naming more is a crowd scene; GroundingDINO prompts stay short
# WordNet's noun morphology (morphy): plural suffix -> singular suffix, tried in order.
# "-s" before "-ies" so that "cookies" is a cookie, not WordNet's "cooky".
PLURAL_SUFFIXES = (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("s", ""), ("ies", "y"))
DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "his", "her", "their", "its", "my", "our", "your", "'s", "some", "several", "many", "each", "every", "another", "both", "one", "two", "three", "four", "five"}
SINGULAR_DETERMINERS = {"a", "an", "one", "this", "each", "every", "another"}
# A noun that is also a verb is the verb right after these ("he watches", "to fly", "the camera pans").
VERB_CUES = {"i", "you", "he", "she", "it", "we", "they", "who", "to", "can", "could", "will", "would", "should", "may", "might", "must", "does", "do", "did", "not", "camera"}
PUNCTUATION = set(",;:.!?()")
WORN_CUES = {"in", "wearing", "wears", "dressed"}  # clothing after these is what a person wears, not an object of the clip
# Words that end a noun phrase when looking back for its determiner ("a woman is carrying grocery bags": no determiner).
PHRASE_BREAKS = PUNCTUATION | {"is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "and", "or", "of", "in", "on", "at", "with", "to", "from", "by", "for", "into", "onto", "while", "as"}


def caption_tokens(text: str) -> list[str]:
    """Lower-case words, possessive "'s" and punctuation as tokens; the lexicon's phrases are these words joined by spaces."""
    text = text.lower().replace("\u2019", "'")
    return re.findall(r"[a-z0-9]+|'s\b|[,;:.!?()]", text)


@dataclass(frozen=True)
class ExtractedObjects:
    """Object names for one caption (lower-case, de-duplicated, in caption order) and who named them.

    `source` is empty when the backend itself answered, or says what stood in for it, e.g.
    "lexical@wordnet-3.0-1a2b3c4d (fallback: answer not grounded in the caption)".
    """

    names: list[str]
    source: str = ""


class ObjectExtractor(Protocol):
    name: str
    version: str

    def setup(self) -> None: ...

    def extract(self, captions: list[str]) -> list[ExtractedObjects]: ...


@dataclass
class _Noun:
    """A lexicon phrase found at tokens[start:end]."""

    start: int
    end: int
    name: str
    kind: str  # "o" object, "w" clothing (an object unless worn), "s" scenery
    verb: str  # "", "v" also a verb, "V" mostly a verb, "g" -ing form of a verb
    inflected: bool  # written as a plural (or a verb's -s form)
    is_verb: bool = False


class LexicalObjectExtractor:
    """Longest-phrase-first lexicon matching on caption words, plurals mapped to their singular, heads of noun runs kept."""

    name = "lexical"

    def __init__(self, lexicon_path: Path = LEXICON_PATH):
        self.lexicon_path = lexicon_path
        self._entries: dict[str, str] = {}
        self._longest = 0
        self.version = ""

    def setup(self) -> None:
        raw = gzip.decompress(self.lexicon_path.read_bytes())
        rows = (line.split("\t") for line in raw.decode().splitlines() if not line.startswith("#"))
        self._entries = {phrase: kind for phrase, kind in rows}
        self._longest = max(phrase.count(" ") + 1 for phrase in self._entries)
        self.version = f"{LEXICON_NAME}-{hashlib.sha1(raw).hexdigest()[:8]}"

    def extract(self, captions: list[str]) -> list[ExtractedObjects]:
        if not self._entries:
            self.setup()
        return [ExtractedObjects(self._extract_one(caption)) for caption in captions]

    def _extract_one(self, caption: str) -> list[str]:
        tokens = caption_tokens(strip_caption_tags(caption))
        nouns = self._find_nouns(tokens)
        for previous, noun in zip([None, *nouns], nouns):
            noun.is_verb = _reads_as_verb(noun, previous, tokens)
        nouns = [noun for noun in nouns if not noun.is_verb]
        heads = [noun for noun, following in zip(nouns, [*nouns[1:], None]) if noun.inflected or not (following and following.start == noun.end)]
        names = [noun.name for noun in heads if noun.kind == "o" or (noun.kind == "w" and not _is_worn(noun, tokens))]
        return list(dict.fromkeys(names))[:MAX_OBJECTS]

    def _find_nouns(self, tokens: list[str]) -> list[_Noun]:
        nouns, at = [], 0
        while at < len(tokens):
            noun = next((found for length in range(min(self._longest, len(tokens) - at), 0, -1) if (found := self._lookup(tokens, at, length))), None)
            if noun:
                nouns.append(noun)
            at = noun.end if noun else at + 1
        return nouns

    def _lookup(self, tokens: list[str], start: int, length: int) -> _Noun | None:
        """The lexicon entry for tokens[start:start+length] (two words also written as one: "cell phone").

        The last word is read as a plural first, then as written ("glasses" -> glass), objects before scenery ("flies"
        -> fly, not a theatre's flies). A plural phrase after "a" is a noun and a verb ("a bus stops"), not a phrase.
        """
        words = tokens[start : start + length]
        if any(word in PUNCTUATION or word == "'s" for word in words):
            return None
        found = []
        closed = length == 2 and min(map(len, words)) > 2 and not {*words} & DETERMINERS  # "cell phone" as "cellphone", not "past a" as "pasta"
        for stem in [" ".join(words[:-1] + [""])] + ([words[0]] if closed else []):
            for last in [*self._singulars(words[-1]), words[-1]]:
                entry = self._entries.get(stem + last, "")
                if entry.startswith("="):
                    last, entry = entry[1:], self._entries.get(stem + entry[1:], "")
                if entry:
                    name = stem + last if stem.endswith(" ") or not stem else f"{stem} {last}"
                    found.append(_Noun(start, start + length, name, entry[0], entry[1:], inflected=last != words[-1]))
        if length > 1 and found and found[0].inflected and _determiner(found[0], tokens) in SINGULAR_DETERMINERS:
            return None
        return next((noun for noun in found if noun.kind != "s"), found[0] if found else None)

    def _singulars(self, word: str) -> list[str]:
        """The singulars a word may be the plural of; irregular ones are lexicon entries ("geese\t=goose")."""
        return [word[: -len(plural)] + singular for plural, singular in PLURAL_SUFFIXES if word.endswith(plural) and len(word) > len(plural) + 1]


def _reads_as_verb(noun: _Noun, previous: _Noun | None, tokens: list[str]) -> bool:
    """Whether a lexicon word that can also be a verb is one here, judged from the words before it."""
    before = tokens[noun.start - 1] if noun.start else ""
    if before == "camera" and noun.inflected:
        return True  # "the camera dollies in": what the camera does, even where WordNet has no such verb
    if noun.verb == "g":
        return before not in DETERMINERS
    if not noun.verb:
        return False
    if before in VERB_CUES:
        return True
    if noun.verb == "V" and noun.inflected and noun.start > 1 and tokens[noun.start - 2] in SINGULAR_DETERMINERS:
        return True  # "a paraglider flies": the unknown word was the noun
    if noun.verb == "V" and noun.inflected and before in ("and", "or") and previous and previous.end == noun.start - 1 and not previous.inflected:
        return True  # "sits on a chair and watches", unlike "swans and ducks"
    if not (previous and previous.end == noun.start and not previous.is_verb):
        return False
    if noun.verb == "V":
        return True
    if noun.inflected:
        return not previous.inflected and _determiner(previous, tokens) in SINGULAR_DETERMINERS
    return previous.inflected


def _determiner(noun: _Noun, tokens: list[str]) -> str:
    """The determiner of a noun phrase ("a small brown dog" -> "a"), or "" when there is none before a verb or preposition."""
    for token in reversed(tokens[max(0, noun.start - 4) : noun.start]):
        if token in DETERMINERS or token in PHRASE_BREAKS:
            return token if token in DETERMINERS else ""
    return ""


def _is_worn(noun: _Noun, tokens: list[str]) -> bool:
    """ "a man in a black and white shirt", "wearing a hat": the clothing describes a person."""
    for token in reversed(tokens[max(0, noun.start - 6) : noun.start]):
        if token in WORN_CUES or (token in PHRASE_BREAKS and token not in ("and", "or")):
            return token in WORN_CUES
    return False


def objects_for_caption(objects: list[str]) -> list[str]:
    """The stage's acceptance rule: a caption that names no object cannot be segmented."""
    if not objects:
        raise SampleRejected(RejectionReason.no_object_in_caption, "the extractor found no object name")
    return objects
