"""The faster detectors find exactly scrubadub's matches: on the machine's Debian changelogs, on generated
phone-like text, and on texts long enough to run phonenumbers out of tries."""

from __future__ import annotations

import random
from pathlib import Path

import phonenumbers
import pytest
import scrubadub
from scrubadub.detectors.email import EmailDetector

from prefer.scorers import pii, pii_detectors


class _StockAtSignEmail(EmailDetector):
    """The reference: scrubadub's email detector keeping "@" matches, with no guard of our own."""

    def iter_filth(self, text, document_name=None):
        for filth in super().iter_filth(text, document_name=document_name):
            if "@" in filth.text:
                yield filth


def _reference_scrubber():
    s = scrubadub.Scrubber()
    s.remove_detector("email")
    s.add_detector(_StockAtSignEmail)
    return s


def _matches(scrubber, text):
    return (
        [
            (f.beg, f.end, "+".join(x.type for x in f.filths) if hasattr(f, "filths") else f.type, f.text)
            for f in scrubber.iter_filth(text)
        ]
        if text
        else []
    )


def _stock_phone(text):
    return [(m.start, m.end, m.raw_string, m.number) for m in phonenumbers.PhoneNumberMatcher(text, "US")]


def _fast_phone(text):
    return [(m.start, m.end, m.raw_string, m.number) for m in pii_detectors.phone_matches(text, "US")]


def test_bounds_from_phonenumbers_metadata():
    # Without a plus sign: Canada's 7-digit 3xxxxxx numbers (country code 1, no transform rule) -> 7.
    # With one: "+43" and Austria's 4-digit numbers -> 2 + 4 = 6 (also Germany +49, Iran +98).
    assert pii_detectors.phone_bounds("US") == pii_detectors.PhoneBounds(without_plus=7, with_plus=6)


def test_scrubber_keeps_scrubadubs_detector_order_and_names():
    assert list(pii.scrubber()._detectors) == list(_reference_scrubber()._detectors)


PHONE_LIKE = [
    "Call (650) 253-0000 or +1 650 253 0000 today.",
    "+44 20 7031 3000",
    "011 44 20 7031 3000",
    "3123456",
    "tel 312-3456",
    "1-800-FLOWERS",
    "800 FLOWERS now",
    "+43 1234",
    "+49 30 1234",
    "+683 4002",
    "ext 1234",
    "650-253-0000 ext. 123",
    "650-253-0000 x 12",
    "(0~20171227-0.3)",
    "2.39.50.20221208-5",
    "+0000",
    "1:2.30-1",
    "20210903",
    "++/100285",
    "0x74960",
    "1003.1-2001",
    "(2.10.0.27-0)",
    "1005997, #1006029",
    "\uff16\uff15\uff10 253 0000",
    "６５０-２５３-００００",
    "650\u00a0253\u00a00000",
    "+1 (268) 464 1234",
    "268 464 1234",
    "+54 9 11 1234 5678",
    "+39 06 698 1234",
    "06 698 1234",
    "+800 1234 5678",
    "tel:+1-650-253-0000",
    "12/31/2020 650-253-0000",
    "2020-01-01 10:00",
    "pages 123-456 (2001)",
    "abc6502530000",
    "6502530000def",
    "6502530000/6502530001",
    "+1 650 253 0000 / x 12",
    "650-253-0000 - 650-253-0001",
]


def test_phone_matches_equal_stock_on_phone_like_strings():
    found = 0
    for text in PHONE_LIKE + [f"See {t}, please." for t in PHONE_LIKE]:
        stock = _stock_phone(text)
        assert _fast_phone(text) == stock, text
        found += bool(stock)
    assert found > 10  # the list holds real numbers, not only near misses


def _random_phone_text(rng: random.Random) -> str:
    pieces = [
        "+",
        "(",
        ")",
        "-",
        ".",
        " ",
        "/",
        "x",
        "ext",
        "#",
        "~",
        "\u00a0",
        "011",
        "1",
        "3",
        "0",
        "9",
        "650",
        "253",
        "0000",
        "44",
        "20",
        "7031",
        "FLOWERS",
        "at",
        ", ",
        ":",
        "\n",
        "\uff15",
        "+1 ",
        "555",
    ]
    parts = []
    for _ in range(rng.randint(1, 14)):
        parts.append(rng.choice(pieces) if rng.random() < 0.5 else str(rng.randint(0, 10 ** rng.randint(1, 11))))
    return "".join(parts)


def test_phone_matches_equal_stock_on_random_phone_like_text():
    rng = random.Random(0)
    texts = [_random_phone_text(rng) for _ in range(4000)]
    found = 0
    for text in texts:
        stock = _stock_phone(text)
        assert _fast_phone(text) == stock, text
        found += bool(stock)
    assert found > 50


def test_long_texts_keep_the_stock_budget_of_tries():
    # Each "a1/2" is a candidate that fails 3 tries in the stock matcher (itself, "1" and "2" split at the
    # slash), so 25000 of them spend its 65535 tries before the number at the end. Dropping them whole would
    # spend 1 try each and find the number: on a text this long that must not happen.
    text = "a1/2 " * 25000 + "call 650-253-0000"
    assert not pii_detectors._tries_cannot_run_out(text)
    assert _stock_phone(text) == [] and _fast_phone(text) == []
    dropping = pii_detectors._SkippingMatcher(text, "US", pii_detectors.phone_bounds("US"), skip_candidates=True)
    assert len(list(dropping)) == 1  # what the budget check prevents
    short = "a1/2 " * 100 + "call 650-253-0000"
    assert pii_detectors._tries_cannot_run_out(short)
    assert _fast_phone(short) == _stock_phone(short) != []


def test_guards_keep_every_detectors_matches():
    texts = [
        "mail me: jane@example.org",
        "I think at all times",
        "@jane_doe said",
        "https://x.org/a www.y.com",
        "HTTP://X.ORG",
        "see https://example.com/page for it",
        "card 4111111111111111 ok",
        "ssn 123-45-6789",
        "username: root password: hunter2",
        "LOGIN: bob\nPW: secret",  # ASCII: the lowered-substring guard
        "u: joe p: x",
        "u\u017fername: root pa\u017f\u017fword: hunter2 (\u00fcber)",  # long s folds to s under re.IGNORECASE
        "Login: r\u00f6ot password: x",  # non-ASCII text: the regex guard
        "card 4111111111111 ok",  # 13 digits, the shortest card number
        # JCB's \d branch: no match (not a valid number), but the guard must let it through
        "card 35\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0661\u0662\u0663\u0664 x",
        "twelve 411111111111 only",
        "no pii here",
        "",
    ]
    reference = _reference_scrubber()
    found = {}
    for text in texts:
        expected = _matches(reference, text)
        assert pii.matches(text) == expected, text
        found.update((kind, text) for _, _, kind, _ in expected)
    # the guarded detectors are each exercised by a text they must let through
    assert {"credential", "credit_card", "email", "twitter", "url", "social_security_number"} <= set(found), found


def _changelog_texts(limit: int) -> list[str]:
    from prefer.data.corpora import load_documents
    from prefer.data.sources.debian import DEBIAN_DOC

    if not any(Path(DEBIAN_DOC).glob("*/changelog.Debian.gz")):
        pytest.skip(f"no Debian changelogs under {DEBIAN_DOC} on this machine (the equality test needs a corpus)")
    documents, _ = load_documents("changelogs")
    step = max(1, len(documents) // limit)  # a fixed spread over the whole corpus, not only its first packages
    return [doc.text for doc in documents[::step][:limit]]


def test_matches_equal_stock_scrubadub_on_changelogs():
    texts = _changelog_texts(1500)
    reference = _reference_scrubber()
    total = 0
    for text in texts:
        expected = _matches(reference, text)
        assert pii.matches(text) == expected, text[:200]
        total += len(expected)
    assert total > len(texts) // 2  # changelog trailers hold addresses: the comparison is not vacuous


def test_scrubadub_imports_without_nltk_and_its_deferred_detectors_still_load():
    # In a fresh process: building the scorer's Scrubber does not import nltk or textblob (seconds of start-up
    # in every scoring process); the two detectors that need them still import on first use.
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from prefer.scorers import pii\n"
        "assert pii.matches('mail jane@example.org') == [(5, 21, 'email', 'jane@example.org')]\n"
        "assert 'nltk' not in sys.modules and 'textblob' not in sys.modules, 'nltk imported'\n"
        "from scrubadub.detectors import SkypeDetector, TextBlobNameDetector\n"
        "import scrubadub.detectors.skype as skype\n"
        "assert skype.SkypeDetector is SkypeDetector and 'nltk' in sys.modules\n"
        "import scrubadub\n"
        "assert scrubadub.detectors.catalogue.detector_catalogue.get('skype') is SkypeDetector\n"
        "assert TextBlobNameDetector.__module__ == 'scrubadub.detectors.text_blob'\n"
    )
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
