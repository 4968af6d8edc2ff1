"""Keyword boosting for Deepgram: the keywords file, and the rules a keyword must follow.

Theory of operation: Deepgram's ``keywords`` query parameter (Nova-2 and older
models; Nova-3 calls the feature "keyterm") takes ``WORD:INTENSIFIER`` pairs, one
parameter each. The intensifier is an exponential factor: 1 is Deepgram's default,
2 boosts more, a negative one suppresses a word. The operator lists them in a text
file that reads like the wire format, one keyword a line::

    # Keywords for the Eko voicebot (UTF-8).
    Eko:2
    résiliation:1.5
    prélèvement          # no boost given: 1
    carte vitale:3       # a phrase is one keyword

A ``#`` starts a comment anywhere on a line; blank lines are skipped; spaces around
the word and the boost are stripped. A word may hold spaces but no ``:`` (the wire
format's separator), no control character and at most :data:`MAX_KEYWORD_CHARS`
characters; a boost is a finite number in ``-BOOST_LIMIT..BOOST_LIMIT``. A word
listed twice (ignoring case) is refused, as is a file with more than
:data:`MAX_KEYWORDS` keywords (Deepgram's documented ceiling before it points to
custom model training). Every mistake raises :class:`~eko_rtp.errors.UserError`
naming the file and the line.

The same rules (:func:`keyword_problem`) check the keywords handed to
:class:`~eko_rtp.asr.deepgram_api.AsrSettings` from anywhere else.
"""

from __future__ import annotations

import math
from os import PathLike
from pathlib import Path

from eko_rtp.errors import UserError

__all__ = ["BOOST_LIMIT", "MAX_KEYWORDS", "MAX_KEYWORD_CHARS", "Keyword", "keyword_problem", "load_keywords",
           "parse_keywords"]

Keyword = tuple[str, float]  # (word, boost)

MAX_KEYWORDS = 100
# Each keyword rides in the handshake's request line, percent-encoded (up to 6 bytes
# for an accented letter): 100 keywords of 50 characters stay within the 8 KiB
# request line that HTTP front ends commonly accept.
MAX_KEYWORD_CHARS = 50
BOOST_LIMIT = 10.0
DEFAULT_BOOST = 1.0


def keyword_problem(word: object, boost: object) -> str | None:
    """What is wrong with the keyword ``(word, boost)``, or None if Deepgram may be sent it."""
    if not isinstance(word, str):
        return f"a keyword must be text, got {type(word).__name__}"
    if not word or word != word.strip():
        return f"keyword {word!r} must be non-empty without surrounding spaces"
    if len(word) > MAX_KEYWORD_CHARS:
        return f"keyword {word[:20]!r}... is {len(word)} characters, over {MAX_KEYWORD_CHARS}"
    if ":" in word:
        return f"keyword {word!r} must not contain ':' (it separates the word from its boost)"
    if not word.isprintable():
        return f"keyword {word!r} must not contain control characters"
    if isinstance(boost, bool) or not isinstance(boost, int | float):
        return f"boost of {word!r} must be a number, got {type(boost).__name__}"
    if not math.isfinite(boost) or not -BOOST_LIMIT <= boost <= BOOST_LIMIT:
        return f"boost of {word!r} must be in {-BOOST_LIMIT:g}..{BOOST_LIMIT:g}, got {boost!r}"
    return None


def parse_keywords(text: str, *, path: str) -> tuple[Keyword, ...]:
    """The keywords of a keywords file's ``text``; ``path`` names the file in errors."""
    keywords: list[Keyword] = []
    seen: dict[str, int] = {}  # casefolded word -> line
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        word, separator, boost_text = content.partition(":")
        word = word.strip()
        boost: float = DEFAULT_BOOST
        if separator:
            boost_text = boost_text.strip()
            try:
                boost = float(boost_text)
            except ValueError:
                raise UserError(f"boost {boost_text!r} of {word!r} is not a number", path=path, line=number) from None
        problem = keyword_problem(word, boost)
        if problem is not None:
            raise UserError(problem, path=path, line=number)
        folded = word.casefold()
        if folded in seen:
            raise UserError(f"keyword {word!r} is already on line {seen[folded]}", path=path, line=number)
        if len(keywords) == MAX_KEYWORDS:
            raise UserError(f"more than {MAX_KEYWORDS} keywords (Deepgram's limit)", path=path, line=number)
        seen[folded] = number
        keywords.append((word, boost))
    return tuple(keywords)


def load_keywords(path: str | PathLike[str]) -> tuple[Keyword, ...]:
    """The keywords in the UTF-8 file at ``path``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"cannot read keywords file: {error.strerror or error}", path=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise UserError(f"not UTF-8 (byte {raw[error.start]:#04x})", path=str(path), line=line) from None
    return parse_keywords(text.removeprefix("\ufeff"), path=str(path))
