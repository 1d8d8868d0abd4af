"""Rebuild `assets/vocabulary/object_lexicon.tsv.gz`, the lexical object extractor's noun lexicon, from WordNet 3.0.

Reads the noun database that Debian's `wordnet-base` package installs (`/usr/share/wordnet`:
data.noun, index.noun, noun.exc, index.verb, cntlist.rev) and keeps the nouns that name things a
grounding model can box: people, animals, plants, artifacts, natural objects, food and drink.
Run `python -m pointvid_pipeline.tools.build_object_lexicon` after `apt-get install wordnet-base`;
the output is deterministic (same WordNet files, same bytes once decompressed).

A lemma is an object when one of its senses lies under OBJECT_ROOTS and not under SCENERY_ROOTS
or body parts, and that sense is its first one, or such senses carry at least MIN_OBJECT_SHARE of
its sense-tagged uses (cntlist.rev), or no sense of it is tagged (then its first sense must not be scenery). Words used mostly as adjectives
or adverbs ("white", "well") are not objects. Lemmas whose first sense is scenery (structures,
roads, surfaces, rooms, landforms, places) are written as scenery: never extracted, but a noun
right before them is a modifier ("grass floor"). Explicit lists below cover what the hierarchy
gets wrong for captions; each says why.

Line format (UTF-8, sorted): `phrase<TAB>kind` where kind is `o` (object), `w` (clothing: an
object unless worn) or `s` (scenery),
followed by `v` (also a verb), `V` (mostly a verb) or `g` (the -ing form of a verb) when they
apply; `form<TAB>=lemma` maps an irregular plural. Phrases are lower-case words joined by one
space, punctuation removed, as the extractor tokenizes captions.
"""

from __future__ import annotations

import argparse
import gzip
import re
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

from pointvid_pipeline.stages.object_prompts import LEXICON_PATH, caption_tokens

WORDNET_DIR = Path("/usr/share/wordnet")

OBJECT_ROOTS = {
    "00004475": "organism (people, animals, plants)",
    "00021939": "artifact",
    "00019128": "natural object",
    "00021265": "food, nutrient (dishes, drinks)",
    "07555863": "solid food (fruit, vegetables, meat)",
}
SCENERY_ROOTS = {
    "04341686": "structure (building, wall, bridge)",
    "04564698": "way (road, street, path)",
    "04362025": "surface of an artifact (floor)",
    "02735688": "area of a structure (room, kitchen)",
    "09287968": "geological formation (mountain, beach)",
    "09239740": "celestial body (sun, moon)",
    "09225146": "body of water (lake, sea)",
    "09334396": "ground, earth",
}
OBJECTS_WITHIN_SCENERY = {"03089014": "conduit (pipe, tube)", "03632277": "ladder (carried about; WordNet files it with stairs)"}
BALL_ROOT = "02778669"  # a sense under "ball" makes a game's name an object too (volleyball, football): the ball is in the clip
BODY_PART_ROOT = "05220461"
CLOTHING_ROOT = "03051540"  # written as kind "w": an object, except when worn ("a man in a red jacket")
LOCATION_LEXFILE = 15  # noun.location: field, park, lawn, city
MIN_OBJECT_SHARE = 0.2

# Things captions mention as where something happens, not what moves; the hierarchy calls them objects.
SCENERY_WORDS = {"ramp", "table", "desk", "counter", "countertop", "shelf", "bed", "carpet", "rug", "grass", "lawn", "sky", "cloud", "track", "ground", "floor", "wall", "background", "scenery", "landscape"}
# Names too vague to ground, or words about the footage rather than the scene (in captions the camera is nearly always the one filming).
OVER_GENERAL = {
    "thing", "object", "item", "stuff", "article", "unit", "device", "equipment", "material", "product", "whole", "part", "piece", "portion", "section",
    "camera", "scene", "view", "video", "footage", "clip", "shot", "image", "frame", "screen", "picture element", "close up", "closeup", "lapse",
    "front", "side", "top", "bottom", "back", "middle", "center", "centre", "edge", "corner", "end", "place", "spot", "line", "row", "set", "light", "lights", "color", "colour",
}  # fmt: skip
# English function words, auxiliaries and frequent adverbs that WordNet also lists as nouns ("can", "will", "a" = vitamin A).
FUNCTION_WORDS = {
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "either", "neither", "both", "all", "no", "none", "one", "two",
    "three", "four", "five", "six", "seven", "eight", "nine", "ten", "i", "me", "my", "mine", "we", "us", "our", "ours", "you", "your", "yours", "he",
    "him", "his", "she", "her", "hers", "it", "its", "they", "them", "their", "theirs", "who", "whom", "whose", "which", "what", "and", "or", "but",
    "nor", "so", "yet", "if", "then", "than", "because", "while", "when", "where", "how", "why", "as", "at", "by", "for", "from", "in", "into", "of",
    "off", "on", "onto", "out", "over", "under", "up", "down", "to", "with", "within", "without", "through", "across", "along", "around", "about",
    "above", "below", "behind", "beside", "between", "near", "past", "since", "until", "upon", "via", "am", "is", "are", "was", "were", "be", "been",
    "being", "do", "does", "did", "done", "have", "has", "had", "having", "can", "could", "will", "would", "shall", "should", "may", "might", "must",
    "not", "very", "too", "also", "just", "still", "well", "even", "only", "more", "most", "much", "many", "few", "less", "least", "here", "there", "now",
    "ever", "never", "again", "once", "like", "back", "away", "close", "next", "last", "first", "second", "other", "another", "such", "own", "same"
}  # fmt: skip
# Objects whatever WordNet says. Every phrase of the hand-made vocabulary this lexicon replaced (the synthetic scenes'
# cube, "stuffed animal", "racket"); hands in close-ups; poured or sprayed water; groups of people boxed as one region;
# the traffic light (a "visual signal" to WordNet); and common things WordNet 3.0 (2006) has no noun for.
PREVIOUS_VOCABULARY = {
    "person", "persons", "man", "guy", "woman", "lady", "child", "kid", "boy", "girl", "baby", "hand", "player", "dancer", "dog", "puppy", "cat", "kitten",
    "horse", "bird", "fish", "cow", "sheep", "duck", "teddy bear", "teddy", "stuffed animal", "ball", "sphere", "soccer ball", "football", "basketball",
    "baseball", "tennis ball", "baseball bat", "bat", "racket", "racquet", "cube", "block", "brick", "alphabet block", "lego brick", "box", "carton", "cup",
    "mug", "glass", "bottle", "kettle", "teapot", "bowl", "plate", "spoon", "knife", "marker", "pen", "pencil", "book", "phone", "smartphone", "toy", "car",
    "truck", "bicycle", "bike", "motorcycle", "motorbike", "boat", "airplane", "plane", "aircraft", "skateboard", "umbrella", "bag", "backpack", "door",
    "chair", "pillow", "towel", "cloth", "flag", "kite", "balloon",
}  # fmt: skip
NOT_IN_WORDNET = {"smartphone", "tablet computer", "kettlebell", "whiteboard", "jet ski", "paraglider", "hoverboard", "e bike", "selfie stick", "game controller"}
SYNTHETIC_KINDS = {"cylinder", "capsule", "domino", "bunny"}  # what synthetic/generator.py renders; "cylinder" is a geometric solid to WordNet
INCLUDE = PREVIOUS_VOCABULARY | NOT_IN_WORDNET | SYNTHETIC_KINDS | {"water", "crowd", "couple", "family", "team", "audience", "traffic light"}
IRREGULAR_PLURALS = {"people": "person"}  # WordNet lists "people" as its own (group) lemma, not in noun.exc
ADJECTIVE_POS = {"a", "r"}  # adjective (and satellite) and adverb counts in cntlist.rev
LATIN_BINOMIAL = re.compile(r"^[A-Z][a-z]+_[a-z]+(_[a-z]+)?$")  # "Canis_familiaris"; only dropped for animals and plants


def normalize(phrase: str) -> str:
    """A WordNet lemma as the extractor reads captions: its words, lower-case, one space apart, no possessive or punctuation."""
    return " ".join(token for token in caption_tokens(phrase.replace("_", " ")) if token[0].isalnum())


class WordNet:
    """The parts of WordNet 3.0's noun database the lexicon needs."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.lexfile: dict[str, int] = {}
        self.hypernyms: dict[str, list[str]] = {}
        self.instance: set[str] = set()
        self.lemmas: dict[str, list[tuple[str, int]]] = {}
        for line in self._lines("data.noun"):
            fields = line.partition(" | ")[0].split()
            offset, count = fields[0], int(fields[3], 16)
            self.lexfile[offset] = int(fields[1])
            self.lemmas[offset] = [(fields[4 + 2 * i], int(fields[5 + 2 * i], 16)) for i in range(count)]
            at = 4 + 2 * count
            pointers = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(int(fields[at]))]
            self.hypernyms[offset] = [target for symbol, target, pos, _ in pointers if symbol in ("@", "@i") and pos == "n"]
            if any(symbol == "@i" for symbol, *_ in pointers):
                self.instance.add(offset)
        self.senses = {fields[0]: fields[-int(fields[2]) :] for fields in map(str.split, self._lines("index.noun"))}
        self.verbs = {line.split()[0] for line in self._lines("index.verb")}
        self.adjectives = {line.split()[0] for line in self._lines("index.adj")}
        self.noun_exceptions = [line.split() for line in self._lines("noun.exc")]
        self.sense_counts, self.pos_counts = self._counts()
        self._ancestors: dict[str, frozenset[str]] = {}

    def _lines(self, name: str) -> list[str]:
        text = (self.directory / name).read_text(encoding="latin-1")
        return [line for line in text.splitlines() if line and not line.startswith("  ")]

    def _counts(self) -> tuple[Counter, dict[str, Counter]]:
        """Sense-tagged uses per (lemma, noun synset) and per (lemma, part of speech), from cntlist.rev."""
        synset_of = {f"{re.sub(r'[(].*[)]$', '', lemma).lower()}%1:{self.lexfile[offset]:02d}:{lex_id:02d}::": offset for offset, lemmas in self.lemmas.items() for lemma, lex_id in lemmas}
        per_sense, per_pos = Counter(), defaultdict(Counter)
        for line in self._lines("cntlist.rev"):
            key, _, count = line.split()
            lemma, _, rest = key.partition("%")
            per_pos[lemma]["nvaar"[int(rest[0]) - 1]] += int(count)
            if key in synset_of:
                per_sense[lemma, synset_of[key]] += int(count)
        return per_sense, per_pos

    def ancestors(self, offset: str) -> frozenset[str]:
        """The synset and every hypernym above it (remembered: the lexicon asks for most synsets)."""
        if offset not in self._ancestors:
            self._ancestors[offset] = frozenset({offset}.union(*(self.ancestors(parent) for parent in self.hypernyms[offset])))
        return self._ancestors[offset]


def sense_kind(wordnet: WordNet, offset: str) -> str:
    """'o' object, 's' scenery or '' (abstract, body part, proper name) for one noun synset."""
    above = wordnet.ancestors(offset)
    if offset in wordnet.instance or BODY_PART_ROOT in above:
        return ""
    if above & OBJECTS_WITHIN_SCENERY.keys() or BALL_ROOT in above:
        return "o"
    if above & SCENERY_ROOTS.keys() or wordnet.lexfile[offset] == LOCATION_LEXFILE:
        return "s"
    return "o" if above & OBJECT_ROOTS.keys() else ""


def lemma_kind(wordnet: WordNet, lemma: str) -> str:
    """'o', 'w' (clothing), 's' or '' for an index.noun lemma (underscored, lower-case), by its senses and how often each is used."""
    phrase = normalize(lemma)
    if phrase in FUNCTION_WORDS or phrase in OVER_GENERAL:
        return ""
    if phrase in INCLUDE:
        return "o"
    if phrase.split()[-1] in SCENERY_WORDS:
        return "s"  # "table", "dinner table", "kitchen floor"
    if " " in phrase and all(is_adjective(wordnet, word) for word in phrase.split()):
        return ""  # a "small white" (a butterfly) is two adjectives in a caption: "a small white sphere"
    senses = wordnet.senses[lemma]
    kinds = [sense_kind(wordnet, offset) for offset in senses]
    uses = [wordnet.sense_counts[lemma, offset] for offset in senses]
    total = sum(uses)
    object_uses = sum(n for n, kind in zip(uses, kinds) if kind == "o")
    if kinds[0] == "s" and not (total and object_uses >= MIN_OBJECT_SHARE * total):
        return "s"  # a "plant" is a factory first, but a green plant often enough to be an object
    other_pos = sum(wordnet.pos_counts[lemma][pos] for pos in ADJECTIVE_POS)
    if "o" not in kinds or other_pos > wordnet.pos_counts[lemma]["n"] or is_described_head(wordnet, lemma):
        return ""
    ball_game = any(BALL_ROOT in wordnet.ancestors(offset) for offset in senses)
    if not (kinds[0] == "o" or total == 0 or ball_game or object_uses >= MIN_OBJECT_SHARE * total):
        return ""
    return "w" if CLOTHING_ROOT in wordnet.ancestors(senses[kinds.index("o")]) else "o"


def is_described_head(wordnet: WordNet, lemma: str) -> bool:
    """ "young man", "wooden spoon", "small boat": adjectives before a noun of the same kind, which names it well enough.

    "hot dog" (food, unlike a dog's first sense) stays a name of its own.
    """
    *described, head = lemma.split("_")
    if not described or head not in wordnet.senses or not all(is_adjective(wordnet, word) for word in described):
        return False
    return wordnet.lexfile[wordnet.senses[lemma][0]] == wordnet.lexfile[wordnet.senses[head][0]]


def is_adjective(wordnet: WordNet, word: str) -> bool:
    """Mostly an adjective ("young", "wooden"), not a noun ("orange juice") nor a participle naming a use ("cutting board")."""
    counts = wordnet.pos_counts[word]
    return word in wordnet.adjectives and not word.endswith("ing") and (word not in wordnet.senses or counts["a"] > counts["n"])


def verb_flag(wordnet: WordNet, lemma: str) -> str:
    """'V' mostly a verb (or a plural-only noun spelled like a verb's -s form), 'v' also a verb, 'g' the -ing form of a verb ("painting"), '' otherwise (single words only)."""
    if "_" in lemma or " " in lemma:
        return ""
    if lemma in wordnet.verbs:
        counts = wordnet.pos_counts[lemma]
        return "V" if counts["v"] > counts["n"] else "v"
    stem = lemma.removesuffix("ing")
    if stem != lemma and {stem, stem + "e", stem[:-1]} & wordnet.verbs:
        return "g"
    if lemma.endswith("s") and lemma[:-1] in wordnet.verbs:
        return "V"  # a noun only in the plural that reads as a verb's third person: "a cylinder falls"
    return ""


def spellings(wordnet: WordNet, lemma: str) -> set[str]:
    """How a lemma is written in captions: each synset spelling of it, minus Latin names of species."""
    names = set()
    for offset in wordnet.senses[lemma]:
        for written, _ in wordnet.lemmas[offset]:
            written = re.sub(r"[(].*[)]$", "", written)
            if written.lower() == lemma and not (LATIN_BINOMIAL.match(written) and wordnet.lexfile[offset] in (5, 20)):
                names.add(normalize(written))
    return names


def build_lines(wordnet: WordNet) -> list[str]:
    kinds: dict[str, str] = {phrase: "o" + verb_flag(wordnet, phrase) for phrase in INCLUDE if phrase.replace(" ", "_") not in wordnet.senses}
    for lemma in sorted(wordnet.senses):
        kind = lemma_kind(wordnet, lemma)
        for phrase in spellings(wordnet, lemma) if kind else ():
            if phrase and (phrase not in kinds or kind != "s"):
                kinds[phrase] = kind + verb_flag(wordnet, lemma)
    plurals = {form: lemma for form, lemma, *_ in wordnet.noun_exceptions}
    plurals.update(IRREGULAR_PLURALS)
    for form, lemma in sorted(plurals.items()):
        form, lemma = normalize(form), normalize(lemma)
        if kinds.get(lemma, "")[:1] in ("o", "w") and form != lemma:
            kinds[form] = "=" + lemma  # "men" are men, not WordNet's work force; "oxen" are oxen, not cattle
    return [f"{phrase}\t{kind}" for phrase, kind in sorted(kinds.items())]


def wordnet_package_version() -> str:
    """The Debian package the files came from, for the header; 'unknown' off Debian."""
    try:
        return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "wordnet-base"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lexicon_text(wordnet_dir: Path = WORDNET_DIR) -> str:
    header = [
        f"# PointVid object lexicon from WordNet 3.0 (Debian wordnet-base {wordnet_package_version()}), built by pointvid_pipeline/tools/build_object_lexicon.py",
        "# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Licence: WORDNET_LICENSE beside this file",
        "# phrase<TAB>kind: o object, w clothing (an object unless worn), s scenery, =lemma irregular plural; then v also a verb, V mostly a verb, g -ing form of a verb",
    ]
    return "\n".join(header + build_lines(WordNet(wordnet_dir))) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=WORDNET_DIR, help="where wordnet-base put data.noun etc.")
    parser.add_argument("--out", type=Path, default=LEXICON_PATH)
    args = parser.parse_args(argv)
    data = gzip.compress(lexicon_text(args.wordnet_dir).encode(), compresslevel=9, mtime=0)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
