"""The terms a run is found by (storage/search.py): what an event's data and an error give,
and where the index stops (left-out values leave a marker of their depth)."""

from __future__ import annotations

from stepwise.storage import search


def test_an_events_terms_are_its_name_and_its_values_by_dotted_path() -> None:
    terms = search.event_terms("order.paid", '{"user": {"id": 42, "name": "Ada", "vip": true, '
                                             '"note": null, "tags": ["a", "b"]}, "total": 9.5, '
                                             '"not-a-name": 1, "items": [{"sku": "A"}]}')
    assert terms == ["e:order.paid", "d:total=9.5", "d:user.id=42", "d:user.name=Ada",
                     "d:user.vip=true"]  # breadth first; nulls, arrays and odd keys left out


def test_values_past_the_limits_are_left_out_with_the_depth_of_the_shallowest() -> None:
    wide = {f"k{i:03d}": i for i in range(search.MAX_DATA_TERMS + 5)}
    terms = search.event_terms("e", {**wide, "deep": {"x": 1}})
    assert len([t for t in terms if t.startswith("d:")]) == search.MAX_DATA_TERMS
    assert terms[-1] == "d~1"
    long = search.event_terms("e", {"a": {"b": "x" * (search.MAX_VALUE + 1), "c": 2}, "d": 3})
    assert long == ["e:e", "d:d=3", "d:a.c=2", "d~2"]  # the rest of the event is indexed
    assert search.partial_markers("a.b") == ["d~1", "d~2"]
    assert search.data_term("a", "x" * (search.MAX_VALUE + 1)) is None
    assert search.event_terms("x" * (search.MAX_VALUE + 1), {}) == []
    assert search.event_terms("e", "not json") == ["e:e"]


def test_an_errors_terms_are_the_words_of_its_name_and_message_once_each() -> None:
    error = {"name": "SMTPTimeout", "message": "Notify failed: SMTP timeout, smtp down",
             "stack": "Traceback (most recent call last): never indexed"}
    assert search.error_terms(error) == ["w:smtptimeout", "w:notify", "w:failed", "w:smtp",
                                         "w:timeout", "w:down"]
    assert search.error_terms_of_json('"plain text failure"') == ["w:plain", "w:text",
                                                                  "w:failure"]
    assert search.error_terms_of_json(None) == []
    many = {"name": "E", "message": " ".join(f"w{i}" for i in range(200))}
    assert len(search.error_terms(many)) == search.MAX_WORDS


def test_a_nul_in_a_value_is_indexed_as_postgresql_compares_it() -> None:
    assert search.event_terms("e", {"a": "x\x00y"}) == ["e:e", "d:a=x\ufffdy"]
    assert search.data_term("a", "x\x00y") == "d:a=x\ufffdy"
