import pytest

from pointvid_pipeline.rejections import RejectionReason, SampleRejected
from pointvid_pipeline.stages.object_prompts import LexicalObjectExtractor, objects_for_caption


@pytest.fixture(scope="module")
def extractor():
    e = LexicalObjectExtractor()
    e.setup()
    return e


def test_names_main_objects_in_caption_order(extractor):
    captions = [
        "A man swinging a baseball bat in a studio",
        "Two hands pick up and move colorful wooden alphabet blocks on a dark cutting mat.",
        "A man juggles a white soccer ball with his feet on a sunny grassy lawn.",
        "<synthetic> A yellow duck and a small red cube drop onto a checkered floor.",
    ]
    assert [e.names for e in extractor.extract(captions)] == [["man", "baseball bat"], ["hand", "block"], ["man", "soccer ball"], ["duck", "cube"]]


def test_plurals_collapse_and_scenery_is_ignored(extractor):
    assert [e.names for e in extractor.extract(["Dogs chase a dog across the lawn near a building and a table"])] == [["dog"]]


def test_deterministic_version_from_vocabulary(extractor):
    other = LexicalObjectExtractor()
    other.setup()
    assert other.version == extractor.version and extractor.version.startswith("vocabulary-")


def test_caption_without_objects_is_rejected(extractor):
    (extraction,) = extractor.extract(["The sun sets over the mountains."])
    with pytest.raises(SampleRejected) as info:
        objects_for_caption(extraction.names)
    assert info.value.reason is RejectionReason.no_object_in_caption
