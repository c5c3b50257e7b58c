import re

from hypothesis import given, settings
from hypothesis import strategies as st

from enrich.keywords import KeywordTagger
from newsmon.record import Article
from newsmon.settings import Topic
from newsmon.text import fold

TOPICS = {
    "nato": Topic(keywords=["NATO", "OTAN", "North Atlantic Treaty Organization"]),
    "ukraine": Topic(keywords=["Ukraine", "Ukraine's"], languages={"fr": ["ukrainien", "ukrainienne"]}),
    "security": Topic(keywords=["sécurité", "Straße"]),
}


def _spans(text, hits):
    return [text[s:e] for _, s, e in hits]


def test_case_and_accent_insensitive_whole_words_with_original_positions():
    text = "La SECURITE de l’OTAN et la sécurité ; otanien n'est pas OTAN, l'otan oui."
    found = KeywordTagger(TOPICS).find(text, "fr")
    assert _spans(text, found["security"]) == ["SECURITE", "sécurité"]
    assert _spans(text, found["nato"]) == ["OTAN", "OTAN", "otan"]  # not inside "otanien"


def test_phrases_match_across_whitespace_and_line_breaks():
    text = "The North  Atlantic\nTreaty   Organization met."
    found = KeywordTagger(TOPICS).find(text, "en")
    assert _spans(text, found["nato"]) == ["North  Atlantic\nTreaty   Organization"]


def test_positions_survive_characters_that_fold_to_other_lengths():
    # "ß" folds to "ss" (longer), a decomposed "é" loses its combining mark (shorter).
    text = "Straße und Se\u0301curite\u0301: NATO"
    found = KeywordTagger(TOPICS).find(text, "de")
    assert _spans(text, found["security"]) == ["Straße", "Se\u0301curite\u0301"]
    assert _spans(text, found["nato"]) == ["NATO"]


def test_per_language_keywords_only_count_in_that_language():
    text = "Les soldats ukrainiens et une entreprise ukrainienne."
    tagger = KeywordTagger(TOPICS)
    assert _spans(text, tagger.find(text, "fr")["ukraine"]) == ["ukrainienne"]
    assert "ukraine" not in tagger.find(text, "en")


def test_longest_match_wins_at_one_place():
    text = "Ukraine's allies and Ukraine"
    hits = KeywordTagger(TOPICS).find(text, "en")["ukraine"]
    assert [kw for kw, _, _ in hits] == ["Ukraine's", "Ukraine"]


def test_tag_stage_counts_title_and_text_terms():
    article = Article(id="x", url="u", canonical_url="u", feed_url="f", language="fr",
                      title="L'OTAN et l'Ukraine", text="Réunion de l'OTAN. Rien d'autre.")
    tagged = KeywordTagger(TOPICS).tag(article)
    by_topic = {hit.topic: hit for hit in tagged.tags}
    assert by_topic["nato"].terms == {"OTAN": 2}
    assert by_topic["ukraine"].terms == {"Ukraine": 1}
    assert [article.text[s:e] for s, e in by_topic["nato"].positions] == ["OTAN"]
    assert by_topic["ukraine"].positions == []  # only in the title


def test_ten_thousand_keywords_still_find_the_right_ones():
    topics = {f"t{i}": Topic(keywords=[f"keyword{i}", f"phrase number {i}"]) for i in range(5000)}
    tagger = KeywordTagger(topics)
    assert tagger.keyword_count == 10000
    found = tagger.find("Nothing here but keyword42 and phrase number 4999, not keyword4200x.")
    assert sorted(found) == ["t42", "t4999"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("aAéÉßﬁ  \n\t'’-İ") + ["e\u0301"]), max_size=40).map("".join))
def test_fold_is_idempotent_and_maps_positions_back_into_the_source(text):
    folded = fold(text)
    assert fold(folded.text).text == folded.text
    positions = [folded.source_pos(i) for i in range(len(folded.text) + 1)]
    assert positions == sorted(positions) and all(0 <= p <= len(text) for p in positions)
    for word in re.finditer(r"[^ ]+", folded.text):  # what the tagger reports: a match's span in the source
        source = text[folded.source_pos(word.start()):folded.source_pos(word.end())]
        assert fold(source).text == word.group()
