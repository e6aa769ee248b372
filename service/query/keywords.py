"""Search keywords: normalised tokens of class names, tags and caption words.

Every record keeps ``keywords``, a sorted list of lower-cased tokens with plural nouns
reduced to their singular and stop words dropped, behind a multikey index. ``GET /v1/search``
turns its ``text`` into terms with the same normalisation and matches them by equality, so
"Dogs on a sofa" finds records with the class ``dog`` and the class ``sofa``.

To feed a new source of words into search, pass its texts to ``keywords_for`` where the
record is built; nothing else changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_KEYWORDS = 256
MAX_SEARCH_TERMS = 16
MAX_TERM_LENGTH = 40

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")

_STOP_WORDS = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves there's it's image photo picture shows showing view
"""
# Words that describe a photograph or where things sit in it, not what it shows: captions are
# written around them ("the photograph shows ..., near the centre of the frame. The scene is
# evenly exposed, with moderate contrast and a natural palette of ..."), and the most common
# were in 64-100% of the records made from the evaluation photos. As keywords they matched
# nearly every record and were half of the index's entries. Colours and the words that say how
# the light looks ("dark", "vivid", "low-key") stay: they are content.
_CAPTION_WORDS = """
    photograph photographs scene frame framing shot composition palette contrast exposure
    exposed evenly moderate moderately overall look looks also suggest suggests suggesting
    likely possibly clearly identified located individual confidence measures pixel pixels
    touches dominated centre center near across spread grouped along next third detail tone
    cues available further covering reasonable
"""
STOP_WORDS = frozenset(_STOP_WORDS.split()) | frozenset(_CAPTION_WORDS.split())
# The nouns among them, whose plurals are stop words too ("photos", "scenes"); function words
# are not read as plurals ("cans" is not "can", nor "wills" "will").
_STOP_NOUNS = frozenset(_CAPTION_WORDS.split()) | {"image", "photo", "picture", "view"}
# Plural endings after which "es", not just "s", was added: potatoes, buses, lenses, boxes.
_ES_PLURALS = ("oes", "ses", "xes", "zes", "ches", "shes")

# Singulars that the suffix rules below would get wrong.
IRREGULAR = {
    "people": "person",
    "persons": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "knives": "knife",
    "leaves": "leaf",
    "shelves": "shelf",
    "wolves": "wolf",
    "loaves": "loaf",
    "halves": "half",
    "buses": "bus",
    "skis": "ski",
    "sheep": "sheep",
    "series": "series",
    "species": "species",
    "glasses": "glass",
    "dishes": "dish",
}

# Class names whose model spelling differs from the words people search with: each maps to
# extra keywords stored beside the tokens of the name itself.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "aeroplane": ("airplane", "plane"),
    "airplane": ("aeroplane", "plane"),
    "motorbike": ("motorcycle",),
    "motorcycle": ("motorbike",),
    "sofa": ("couch",),
    "couch": ("sofa",),
    "pottedplant": ("potted", "plant"),
    "diningtable": ("dining", "table"),
    "tvmonitor": ("tv", "monitor", "television"),
    "tv": ("television",),
    "cell phone": ("phone", "cellphone", "mobile"),
    "hair drier": ("dryer", "hairdryer"),
}


def lemma(word: str) -> str:
    """The singular of an English plural noun by simple suffix rules; other words unchanged."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zzes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """Normalised words of ``text``: lower-cased, singular, stop words and long tokens dropped."""
    out: list[str] = []
    for match in _WORD.finditer(text.lower()):
        word = match.group().replace("'", "")
        if len(word) > MAX_TERM_LENGTH:
            continue
        singular = lemma(word)
        if word not in STOP_WORDS and singular not in _STOP_NOUNS:
            out.append(singular)
    return out


def stored_forms(word: str) -> list[str]:
    """The keywords a searched word may be stored as. Suffix rules cannot tell ``puppies``
    (puppy) from ``collies`` (collie), or ``potatoes`` (potato) from ``shoes`` (shoe), and
    leave ``basenjis`` and ``tvs`` alone: each other reading of a plural is tried too."""
    forms = [lemma(word)]
    if word.endswith("s") and word.isalpha() and not word.endswith(("ss", "us")):
        readings = [word[:-1], word[:-2] if word.endswith(_ES_PLURALS) else ""]
        forms += [lemma(reading) for reading in readings if len(reading) > 1]
    return list(dict.fromkeys(forms))


def keywords_for(
    classes: Iterable[str], tags: Iterable[str] = (), caption_texts: Iterable[str] = ()
) -> list[str]:
    """The sorted, distinct keywords of a record's class names, tag names and caption texts."""
    words: set[str] = set()
    for name in classes:
        words.update(tokens(name))
        for synonym in SYNONYMS.get(name.lower(), ()):
            words.update(tokens(synonym))
    for text in (*tags, *caption_texts):
        words.update(tokens(text))
    return sorted(words)[:MAX_KEYWORDS]


def _search_words(text: str) -> list[str]:
    """The words of a search text that make terms, one per term, at most ``MAX_SEARCH_TERMS``."""
    by_term: dict[str, str] = {}
    for match in _WORD.finditer(text.lower()):
        word = match.group().replace("'", "")
        for term in tokens(word):
            by_term.setdefault(term, word)
    return list(by_term.values())[:MAX_SEARCH_TERMS]


def search_terms(text: str) -> list[str]:
    """The distinct terms of a search text, in the order given, at most ``MAX_SEARCH_TERMS``."""
    return [lemma(word) for word in _search_words(text)]


def search_forms(text: str) -> list[list[str]]:
    """For each term of a search text, the keywords it may be stored as (``stored_forms``)."""
    return [stored_forms(word) for word in _search_words(text)]
