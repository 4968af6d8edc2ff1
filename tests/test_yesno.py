"""The French yes/no classifier for « Est-ce à ce sujet ? »."""

from __future__ import annotations


import pytest

from eko_rtp.call.yesno import MAX_CHARS, MAX_WORDS, Answer, classify_yes_no, normalise_transcript

YES, NO, UNKNOWN = Answer.YES, Answer.NO, Answer.UNKNOWN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Plain yes, in its many forms.
        ("oui", YES),
        ("Oui.", YES),
        ("OUI !", YES),
        ("Ouais.", YES),
        ("ouai", YES),
        ("oui oui", YES),
        ("Oui, oui, oui.", YES),
        ("Exactement !", YES),
        ("exact", YES),
        ("C'est ça.", YES),
        ("C’est ça", YES),  # typographic apostrophe
        ("c'est bien ça", YES),
        ("Oui, c'est ça.", YES),
        ("Tout à fait.", YES),
        ("tout a fait", YES),  # a transcriber that drops the accent
        ("Bien sûr.", YES),
        ("Absolument.", YES),
        ("Voilà.", YES),
        ("voilà c'est ça", YES),
        ("Affirmatif.", YES),
        ("D'accord.", YES),
        ("D’accord", YES),
        ("En effet.", YES),
        ("Effectivement.", YES),
        ("c'est bon", YES),
        ("ok", YES),
        ("Si si.", YES),
        ("Je pense que oui.", YES),
        ("Oui pas de problème.", YES),
        ("pas de souci", YES),
        ("C'est ça, n'est-ce pas ?", YES),
        ("Oui\u00a0!", YES),  # no-break space from a transcriber
        ("Euh… oui.", YES),
        ("Ben oui.", YES),
        ("Alors, euh, bah oui.", YES),
        ("Oui, c'est pour ma facture.", YES),
        # Plain no.
        ("non", NO),
        ("Non.", NO),
        ("Nan.", NO),
        ("non non", NO),
        ("Non merci.", NO),
        ("Pas du tout.", NO),
        ("Absolument pas.", NO),
        ("Bien sûr que non.", NO),
        ("Pas vraiment.", NO),
        ("Pas tout à fait.", NO),
        ("Pas ça.", NO),
        ("C'est pas ça.", NO),
        ("Ce n'est pas ça.", NO),
        ("C'est pas exactement ça.", NO),
        ("C'est autre chose.", NO),
        ("C'est pour autre chose.", NO),
        ("Pas pour ça.", NO),
        ("C'est pas pour ça.", NO),
        ("Ça n'a rien à voir.", NO),
        ("Ce n'est pas le cas.", NO),
        ("Je crois que non.", NO),
        ("Négatif.", NO),
        ("Hum, non, c'est pour ma carte vitale.", NO),
        # Negation wins over a yes beside it...
        ("Ouais, pas vraiment.", NO),
        ("Non, c'est ça.", NO),
        ("Oui, euh, non.", NO),
        # ...but a correction starts the answer over.
        ("Oui, enfin non.", NO),
        ("Non, enfin oui.", YES),
        ("Non enfin si.", YES),
        ("Oui mais non.", NO),
        ("Non mais oui.", YES),
        ("Non, je veux dire oui.", YES),
        ("En fait non.", NO),
        ("En fait oui.", YES),
        ("Oui c'est ça mais en fait c'est pour autre chose.", NO),
        ("Je sais pas, enfin oui.", YES),
        ("Oui, enfin je crois.", YES),  # nothing said after the correction
        # Unsure, or no answer at all.
        ("Je sais pas.", UNKNOWN),
        ("Je ne sais pas.", UNKNOWN),
        ("J'sais pas trop.", UNKNOWN),
        ("Peut-être.", UNKNOWN),
        ("Oui peut-être.", UNKNOWN),
        ("Non, je suis pas sûr.", UNKNOWN),
        ("Pas forcément.", UNKNOWN),
        ("ÇA DÉPEND", UNKNOWN),
        ("Bof.", UNKNOWN),
        ("Mouais.", UNKNOWN),
        ("Si vous voulez.", UNKNOWN),
        ("Comment ?", UNKNOWN),
        ("Pardon, j'ai pas compris.", UNKNOWN),  # "pas" here is no answer
        ("Je n'ai pas bien entendu.", UNKNOWN),
        ("Je vous entends pas.", UNKNOWN),
        ("Pardon ?", UNKNOWN),
        ("Allô ?", UNKNOWN),
        ("C'est pour ma facture.", UNKNOWN),
        ("Merci.", UNKNOWN),
        ("euh", UNKNOWN),
        ("", UNKNOWN),
        ("   ...  ", UNKNOWN),
    ],
)
def test_classify(text, expected):
    assert classify_yes_no(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Oui, c’est ÇA !", ["oui", "c", "est", "ca"]),
        ("Euh… bah peut-être", ["peut", "etre"]),
        ("tout   à\tfait", ["tout", "a", "fait"]),
        ("D'accord, O.K.", ["d", "accord", "o", "k"]),
        ("Œuvre « où » naïve", ["œuvre", "ou", "naive"]),
        ("", []),
    ],
)
def test_normalise_transcript(text, words):
    assert normalise_transcript(text) == words


def test_only_the_first_words_are_classified():
    assert MAX_WORDS == 12
    filler_words = "le chat de ma voisine est " * 2  # twelve words
    assert classify_yes_no("oui " + filler_words) == YES
    assert classify_yes_no(filler_words + "oui") == UNKNOWN
    # Fillers do not count toward the limit...
    assert classify_yes_no("euh " * 20 + "oui") == YES
    # ...but only the first MAX_CHARS characters are read at all.
    assert MAX_CHARS == 300
    assert classify_yes_no("euh " * 75 + "oui") == UNKNOWN
    assert len(normalise_transcript("non " * 100_000)) == MAX_WORDS
