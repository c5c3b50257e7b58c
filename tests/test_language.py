import os
import subprocess
import sys

from enrich.language import detect, detect_language
from newsmon.record import Article
from newsmon.settings import LanguageSettings

SAMPLES = {
    "fr": "Le secrétaire général de l'OTAN a souligné que l'Europe assumait davantage de responsabilités au sein de l'alliance.",
    "en": "The defence ministers met in Brussels on Thursday and agreed on a new package of military aid for the country.",
    "de": "Die Verteidigungsminister trafen sich am Donnerstag in Brüssel und beschlossen ein neues Hilfspaket für das Land.",
    "es": "Los ministros de Defensa se reunieron el jueves en Bruselas y acordaron un nuevo paquete de ayuda militar.",
    "it": "I ministri della Difesa si sono riuniti giovedì a Bruxelles e hanno concordato un nuovo pacchetto di aiuti militari.",
}


def test_detects_each_language_with_confidence():
    for expected, text in SAMPLES.items():
        language, confidence = detect(text)
        assert language == expected
        assert 0.5 < confidence <= 1.0


def test_same_text_same_answer_in_every_process():
    """langdetect is a random walk: seeded, so a redelivered article gets the same language on any
    worker, whatever its hash seed or what it detected before."""
    ambiguous = "Hotel Restaurant Bar Pizza Pasta Taxi Radio Hotel Restaurant Bar Pizza Pasta Taxi Radio"
    script = ("import sys; from enrich.language import detect; detect(sys.argv[2]); print(*detect(sys.argv[1]))")
    answers = {subprocess.run([sys.executable, "-c", script, ambiguous, warm_up], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
               for seed, warm_up in (("1", "Bonjour à tous"), ("2", "Guten Tag zusammen"), ("3", SAMPLES["es"]))}
    here = "{} {}".format(*detect(ambiguous))
    assert answers == {here}


def test_too_short_is_undetermined_and_the_feed_hint_is_used():
    assert detect("OK 123") == ("und", 0.0)
    article = Article(id="x", url="u", canonical_url="u", feed_url="f", title="", text="Oui.", language_hint="fr")
    detected = detect_language(article, LanguageSettings())
    assert (detected.language, detected.language_confidence) == ("fr", 0.0)


def test_only_a_bounded_prefix_is_read():
    text = SAMPLES["fr"] * 3 + " " + SAMPLES["en"] * 200
    assert detect(text, prefix_chars=300)[0] == "fr"
