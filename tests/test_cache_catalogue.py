"""The phrase catalogue: the shipped file, and every malformed file naming file, line and key."""

from __future__ import annotations

import hashlib

import pytest
from cache_helpers import CATALOGUE, run_cli, snapshot

from eko_rtp.cache.catalogue import load_catalogue, parse_catalogue
from eko_rtp.errors import UserError

GOOD = '[phrases.greet]\ntext = "Bonjour."\n\n[phrases.goodbye]\ntext = "Au revoir."\n'


def test_shipped_catalogue_has_the_36_phrases_and_the_verbatim_ones():
    catalogue = load_catalogue(CATALOGUE)
    assert len(catalogue) == 36
    texts = {entry.key: entry.text for entry in catalogue}
    assert texts["returning_client_pending_internet"] == (
        "Bonjour, je suis Eko. Vous avez un ticket ouvert concernant votre connexion. Est-ce à ce sujet ?")
    assert texts["returning_client_pending_mobile"] == (
        "Bonjour, je suis Eko. Vous avez un ticket ouvert concernant votre mobile. Est-ce à ce sujet ?")
    assert texts["returning_client_no_ticket"] == "Bonjour, je vous reconnais. Je suis Eko. Comment puis-je vous aider ?"
    assert texts["clarify_yes_no"] == "Pouvez-vous répondre par oui ou par non ?"
    assert texts["filler_one_moment"] == "Un instant, s'il vous plaît."
    for key in ("greet", "welcome", "ticket_transfer_ok", "ticket_not_related", "still_there", "goodbye", "error"):
        assert key in catalogue
    # The line of each table is where its header is.
    lines = CATALOGUE.read_text(encoding="utf-8").splitlines()
    for entry in catalogue:
        assert lines[entry.line - 1] == f"[phrases.{entry.key}]"


def test_good_catalogue_keeps_file_order_and_lines():
    catalogue = parse_catalogue(GOOD, "p.toml")
    assert [(entry.key, entry.text, entry.line) for entry in catalogue] == [
        ("greet", "Bonjour.", 1), ("goodbye", "Au revoir.", 4)]
    assert catalogue.get("goodbye").text_sha256 == hashlib.sha256("Au revoir.".encode("utf-8")).hexdigest()
    assert "greet" in catalogue and "welcome" not in catalogue and catalogue.get("welcome") is None


BAD = [
    # (source, path, line, key, message)
    ('[phrases.greet]\ntext = "a"\n\n[phrases.greet]\ntext = "b"\n', 4, "greet",
     "p.toml:4, key 'greet': duplicate key (first defined at line 1)"),
    ('[phrases.greet]\ntext = "a"\n[phrases.goodbye]\ntext = Au revoir\n', 4, "goodbye",
     "p.toml:4, key 'goodbye': TOML syntax error: Invalid value"),
    ('[phrases.greet]\ntext = "a"\n[phrases.goodbye]\ntext = "x\n', 4, "goodbye",
     "p.toml:4, key 'goodbye': TOML syntax error: Illegal character '\\n'"),
    ('[phrases.greet]\ntext = "a"\n\n[phrases.still_there]\ntext = "   "\n', 5, "still_there",
     "p.toml:5, key 'still_there': empty text"),
    ('[phrases.greet]\ntext = "a"\nvoice = "fr"\n', 3, "greet",
     "p.toml:3, key 'greet': unknown field 'voice' (expected only 'text')"),
    ('[phrases.greet]\ntext = "a"\n[phrases.Bad-Key]\ntext = "b"\n', 3, "Bad-Key",
     "p.toml:3, key 'Bad-Key': key must match [a-z0-9_]+ (it names the file <key>.raw)"),
    ('[phrases.greet]\ntext = "a"\n[phrases."../etc"]\ntext = "b"\n', 3, "../etc",
     "p.toml:3, key '../etc': key must match [a-z0-9_]+ (it names the file <key>.raw)"),
    ('[phrases.greet]\ntxt = "a"\n', 2, "greet",
     "p.toml:2, key 'greet': unknown field 'txt' (expected only 'text')"),
    ('[phrases.greet]\n', 1, "greet", "p.toml:1, key 'greet': missing field 'text'"),
    ('[phrases.greet]\ntext = 3\n', 2, "greet", "p.toml:2, key 'greet': 'text' must be a string, got a int"),
    ('title = "x"\n[phrases.greet]\ntext = "a"\n', 1, None,
     "p.toml:1: unknown top-level entry 'title' (expected only [phrases.<key>] tables)"),
    ('# nothing\n', None, None, "p.toml: the catalogue has no phrases"),
]


@pytest.mark.parametrize(("source", "line", "key", "message"), BAD)
def test_bad_catalogue_names_file_line_and_key(source, line, key, message):
    with pytest.raises(UserError) as caught:
        parse_catalogue(source, "p.toml")
    assert str(caught.value) == message
    assert (caught.value.path, caught.value.line, caught.value.key) == ("p.toml", line, key)


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b'[phrases.greet]\ntext = "caf\xe9"\n')
    with pytest.raises(UserError) as caught:
        load_catalogue(path)
    assert str(caught.value) == f"{path}:2: not valid UTF-8 (byte 27)"


def test_missing_catalogue(tmp_path):
    with pytest.raises(UserError) as caught:
        load_catalogue(tmp_path / "none.toml")
    assert str(caught.value) == f"{tmp_path / 'none.toml'}: phrase catalogue not found"


@pytest.mark.parametrize("command", ["build", "check"])
def test_cli_bad_catalogue_exits_2_and_leaves_the_cache_alone(tmp_path, command):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "greet.raw").write_bytes(b"\xff" * 160)
    (cache / "manifest.json").write_text("{}")
    before = snapshot(cache)
    phrases = tmp_path / "phrases.toml"
    phrases.write_text('[phrases.greet]\ntext = "a"\n\n[phrases.greet]\ntext = "b"\n', encoding="utf-8")
    result = run_cli("cache", command, "--cache", cache, "--phrases", phrases)
    assert result.returncode == 2
    assert result.stderr == f"eko-rtp: error: {phrases}:4, key 'greet': duplicate key (first defined at line 1)\n"
    assert snapshot(cache) == before
