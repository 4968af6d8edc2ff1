"""Yes or no, from the transcript of the caller's answer to « Est-ce à ce sujet ? ».

Theory of operation: the transcript is normalised into words, the words are read
left to right against a small lexicon of phrases, and a few explicit rules turn
the phrases found into :class:`Answer.YES`, :class:`Answer.NO` or
:class:`Answer.UNKNOWN`. UNKNOWN is the safe answer: the script asks again.

Normalisation (:func:`normalise_transcript`):

- only the first :data:`MAX_CHARS` characters are read, and only the first
  :data:`MAX_WORDS` words left after dropping fillers are classified (the answer
  to a yes/no question comes first; a long story after it does not change it,
  and a transcript is bounded work whatever its size);
- case is folded and accents are stripped, so « Ça », « ca » and « ÇA » are the
  same word, and « à » reads as « a »: harmless, because « à » only matters
  inside phrases (« tout à fait »), which are normalised the same way, and a
  transcriber that writes « tout a fait » is understood too;
- apostrophes (' and ’), hyphens and all other punctuation separate words:
  « c'est » is « c est », « peut-être » is « peut etre »;
- fillers (« euh », « ben », « bah », « alors », « hum », « ah »…) are dropped.

Reading: at each word the longest lexicon phrase starting there is taken (so
« pas tout à fait » is one phrase, not « pas » then « tout à fait »), else the
word is skipped. Each phrase is a YES (« oui », « c'est ça », « tout à fait »…),
a NO (« non », « pas du tout », « autre chose »…), a HEDGE (« je sais pas »,
« peut-être », « j'ai pas compris »…), a CORRECTION (« enfin », « mais »,
« en fait », « plutôt »), or NEUTRAL (a phrase that must not be misread word
by word: « n'est-ce pas »). The word « pas » alone is a NO, so a negated yes
(« c'est pas exactement ça ») reads as no, and the few phrases where « pas »
agrees (« pas de souci ») are YES phrases of their own.

Rules, in order:

1. A correction starts the answer over: only the words after the last
   correction that is followed by a YES, NO or HEDGE count. « oui enfin non »
   is NO, « non mais oui » is YES, « oui mais c'est pour autre chose » is NO.
2. A HEDGE in what counts makes it UNKNOWN: « oui peut-être », « je sais pas ».
3. Otherwise any NO makes it NO, even beside a YES: negation wins. « ouais pas
   vraiment » is NO, and so is « non c'est ça »: the script then asks what the
   call is about, which costs a misheard yes one turn, where a wrong YES would
   take the call down the wrong path.
4. Otherwise any YES makes it YES; nothing recognised is UNKNOWN.
"""

from __future__ import annotations

import enum
import re
import unicodedata

__all__ = ["Answer", "MAX_CHARS", "MAX_WORDS", "classify_yes_no", "normalise_transcript"]

MAX_CHARS = 300  # of the transcript read at all
MAX_WORDS = 12  # words classified, after fillers are dropped


class Answer(enum.Enum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


class _Kind(enum.Enum):
    YES = "yes"
    NO = "no"
    HEDGE = "hedge"
    CORRECTION = "correction"
    NEUTRAL = "neutral"


_FILLERS = frozenset(
    "euh euuh heu heuu euhm hum humm hmm hm mmh mh ben bah beh bref alors ah oh eh hein".split())

# Phrases as a caller says them; normalised like transcripts when the module loads.
_YES = (
    "oui", "ouais", "ouai", "ouaip", "ouep", "oué", "ui", "si", "si si", "yes",
    "exactement", "exact", "c'est exact", "c'est ça", "c'est bien ça", "c'est exactement ça", "c'est cela",
    "c'est bien cela", "tout à fait", "tout juste", "c'est juste", "correct", "c'est correct", "c'est bon",
    "bien sûr", "bien sûr que oui", "bien entendu", "évidemment", "absolument", "parfaitement",
    "certainement", "carrément", "effectivement", "en effet", "voilà", "affirmatif", "je confirme",
    "d'accord", "d'ac", "dac", "ok", "o.k.", "okay", "oké", "okey",
    "je pense que oui", "je crois que oui", "il me semble que oui",
    "pas de souci", "pas de soucis", "pas de problème", "sans problème",
)
_NO = (
    "non", "nan", "nope", "no", "négatif", "pas", "du tout", "pas du tout", "absolument pas",
    "certainement pas", "bien sûr que non", "jamais", "aucunement", "nullement",
    "pas vraiment", "pas exactement", "pas tout à fait", "pas ça", "c'est pas ça", "ce n'est pas ça",
    "ce n'est pas cela", "pas pour ça", "pas le cas", "autre chose", "c'est autre chose",
    "une autre chose", "autre sujet", "un autre sujet", "autre question", "autre problème", "autre raison",
    "rien à voir", "je pense que non", "je crois que non", "il me semble que non",
)
_HEDGE = (
    "je sais pas", "je ne sais pas", "j'sais pas", "sais pas", "chais pas", "je sais plus",
    "je ne sais plus", "j'en sais rien", "je n'en sais rien", "aucune idée", "peut-être", "peut-être pas",
    "pas sûr", "pas sûre", "pas certain", "pas certaine", "pas forcément", "je suis pas sûr",
    "je ne suis pas sûr", "possible", "c'est possible", "probablement", "sans doute", "ça dépend",
    "plus ou moins", "en partie", "bof", "mouais", "si vous voulez", "si tu veux",
    # The caller did not hear or understand the question: ask again.
    "pas compris", "pas bien compris", "pas entendu", "pas bien entendu", "comprends pas", "entends pas",
)
_CORRECTION = ("enfin", "mais", "en fait", "plutôt", "ou plutôt", "je veux dire")
_NEUTRAL = ("n'est-ce pas", "est-ce pas")

_MARKS = re.compile(r"[\u0300-\u036f]+")
_SEPARATORS = re.compile(r"[\W_]+")  # anything but letters and digits


def normalise_transcript(text: str) -> list[str]:
    """The words of a transcript as the classifier reads them: at most :data:`MAX_WORDS`,
    folded to lower case without accents, punctuation or fillers."""
    text = unicodedata.normalize("NFKD", text[:MAX_CHARS].casefold())
    text = _SEPARATORS.sub(" ", _MARKS.sub("", text))
    words = [word for word in text.split() if word not in _FILLERS]
    return words[:MAX_WORDS]


def _build_lexicon() -> dict[tuple[str, ...], _Kind]:
    lexicon: dict[tuple[str, ...], _Kind] = {}
    for kind, phrases in ((_Kind.YES, _YES), (_Kind.NO, _NO), (_Kind.HEDGE, _HEDGE),
                          (_Kind.CORRECTION, _CORRECTION), (_Kind.NEUTRAL, _NEUTRAL)):
        for phrase in phrases:
            key = tuple(normalise_transcript(phrase))
            if not key or lexicon.setdefault(key, kind) is not kind:
                raise ValueError(f"yes/no lexicon: phrase {phrase!r} is empty or listed twice")
    return lexicon


_LEXICON = _build_lexicon()
_SIGNALS = frozenset((_Kind.YES, _Kind.NO, _Kind.HEDGE))
_LONGEST = max(len(key) for key in _LEXICON)


def _phrases(words: list[str]) -> list[_Kind]:
    """The kinds of the phrases read left to right, the longest phrase at each word."""
    kinds = []
    position = 0
    count = len(words)
    while position < count:
        for length in range(min(_LONGEST, count - position), 0, -1):
            kind = _LEXICON.get(tuple(words[position : position + length]))
            if kind is not None:
                kinds.append(kind)
                position += length
                break
        else:
            position += 1
    return kinds


def classify_yes_no(text: str) -> Answer:
    """Whether a transcript answers yes or no (UNKNOWN when unsure); see the module's rules."""
    kinds = _phrases(normalise_transcript(text))
    # Rule 1: the answer starts over after the last correction before the last signal.
    start = 0
    last_signal = max((index for index, kind in enumerate(kinds) if kind in _SIGNALS), default=-1)
    for index in range(last_signal - 1, -1, -1):
        if kinds[index] is _Kind.CORRECTION:
            start = index + 1
            break
    counted = kinds[start:]
    if _Kind.HEDGE in counted:
        return Answer.UNKNOWN
    if _Kind.NO in counted:
        return Answer.NO
    if _Kind.YES in counted:
        return Answer.YES
    return Answer.UNKNOWN
