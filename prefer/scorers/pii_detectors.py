"""scrubadub's default detectors with the same matches, faster: each skips text in which it cannot match.

On Debian changelogs scrubadub's phone detector takes about three quarters of the scoring time: it hands every
run of digits (version strings, dates) to phonenumbers, which parses and validates it in Python. Most of those
runs have too few digits to be a valid number anywhere, which a count proves without parsing (`PhoneBounds`).
The other guards are plain necessary conditions read off each detector's pattern:

- email (the "@"-only variant of pii.py) and twitter: every match contains "@";
- url: scrubadub's pattern (case-sensitive) starts with "http://", "https://" or "www.";
- credit card, US social security number: every match starts with an ASCII digit.

tests/scorers/test_pii_detectors.py checks the matches equal stock scrubadub's on changelogs and on generated
phone-like text.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from dataclasses import dataclass
from functools import cache

# scrubadub's skype and name detectors, imported on first use instead of with scrubadub (see _import_scrubadub)
_DEFERRED = {"skype": "SkypeDetector", "text_blob": "TextBlobNameDetector"}


def _import_scrubadub() -> None:
    """Import scrubadub without the modules of its skype and TextBlob name detectors, which import nltk and
    textblob: most of scrubadub's import time, for two detectors that are off by default
    (autoload False) and unused by prefer. Placeholders stand in for those two modules while scrubadub imports,
    and are then removed: scrubadub.detectors.SkypeDetector, .TextBlobNameDetector, .skype and .text_blob import
    the real modules on first access (module __getattr__), which register the detectors as usual."""
    if "scrubadub" in sys.modules:
        return
    placeholders = {}
    for module, cls in _DEFERRED.items():
        name = f"scrubadub.detectors.{module}"
        if name not in sys.modules:
            placeholder = types.ModuleType(name)
            setattr(placeholder, cls, None)
            placeholders[name] = sys.modules[name] = placeholder
    try:
        import scrubadub.detectors  # noqa: F401  (imported for sys.modules)
    finally:
        for name, placeholder in placeholders.items():
            if sys.modules.get(name) is placeholder:
                del sys.modules[name]
    package = sys.modules["scrubadub.detectors"]
    for module, cls in _DEFERRED.items():
        if getattr(package, module, None) in placeholders.values():
            delattr(package, module)
        if getattr(package, cls, False) is None:
            delattr(package, cls)

    def deferred(attribute: str):
        for module, cls in _DEFERRED.items():
            if attribute in (module, cls):
                loaded = importlib.import_module(f"scrubadub.detectors.{module}")
                setattr(package, cls, getattr(loaded, cls))
                return loaded if attribute == module else getattr(loaded, cls)
        raise AttributeError(f"module 'scrubadub.detectors' has no attribute {attribute!r}")

    package.__getattr__ = deferred


_import_scrubadub()

from phonenumbers import Leniency, PhoneMetadata, PhoneNumberMatcher  # noqa: E402  (after scrubadub's lean import)
from phonenumbers.phonenumbermatcher import _INNER_MATCHES  # noqa: E402
from phonenumbers.phonenumberutil import (  # noqa: E402
    _PLUS_CHARS,
    COUNTRY_CODE_TO_REGION_CODE,
    region_code_for_country_code,
)
from scrubadub import Scrubber  # noqa: E402
from scrubadub.detectors import (  # noqa: E402
    CredentialDetector,
    CreditCardDetector,
    EmailDetector,
    PhoneDetector,
    TwitterDetector,
    UrlDetector,
)
from scrubadub.detectors.en_US import SocialSecurityNumberDetector  # noqa: E402
from scrubadub.filth import PhoneFilth  # noqa: E402

_DIGIT = re.compile(r"[0-9]")
_MAX_TRIES = 65535  # PhoneNumberMatcher's default, which scrubadub's phone detector uses


@dataclass(frozen=True)
class PhoneBounds:
    """Fewest letters and digits a phonenumbers candidate needs to hold a VALID number, parsed with a default
    region: `with_plus` when it holds a plus sign, `without_plus` otherwise.

    Why these bound every match. The matcher's candidates are runs of digits and phone punctuation; every
    number it tries is parsed from a substring of one candidate, and parsing builds the country code and the
    national number from that substring's digits (letters too, read as keypad digits, when it has three or
    more), dropping everything else. VALID leniency needs `is_valid_number`, whose national number length must
    be one of the `possible_length` of the general description of a region with that country code. Parsing
    may lengthen the national number only by a national-prefix transform rule (Argentina's "9\\1" adds a 9),
    at most once per stripping, using the metadata of the code's main region (or of the default region).
    - Country code from the default region (no plus, no international prefix): national length >= the
      shortest possible length among the regions of the default code (7 for code 1: Canada's 3xxxxxx), less
      what that code's transform rules may add (none for code 1).
    - Country code written after a plus (or after the default region's international dialling prefix, "011"
      for US, whose digits count too): >= len(code) + shortest national length of the code - its additions,
      the least over all codes (6 in phonenumbers 9.0: "+43" + 4 digits).
    """

    without_plus: int
    with_plus: int


def _transform_digits(metadata) -> int:
    """Digits a national-prefix transform rule may add: its literal digits ("9\\1" -> 1; back-references are
    digits taken from the number)."""
    rule = metadata.national_prefix_transform_rule
    return len(_DIGIT.findall(re.sub(r"\\\d", "", rule))) if rule else 0


@cache
def phone_bounds(region: str) -> PhoneBounds:
    """`PhoneBounds` for numbers parsed with default `region`, computed from phonenumbers' metadata (all
    regions: about 0.2 s, once per process)."""
    default = PhoneMetadata.metadata_for_region(region)
    least_international = None
    least_default = None
    for code, regions in COUNTRY_CODE_TO_REGION_CODE.items():
        shortest = min(
            min(PhoneMetadata.metadata_for_region_or_calling_code(code, r).general_desc.possible_length)
            for r in regions
        )
        main = PhoneMetadata.metadata_for_region_or_calling_code(code, region_code_for_country_code(code))
        added = _transform_digits(main)
        if default is not None and code == default.country_code:
            # stripped twice on this path (when the country code is taken off, then in parse), with either set
            added = 2 * max(added, _transform_digits(default))
            least_default = shortest - added
        total = len(str(code)) + shortest - added
        least_international = total if least_international is None else min(least_international, total)
    prefix = default.international_prefix if default is not None else None
    idd = len(prefix) if prefix and prefix.isdigit() else 0  # a literal prefix such as "011"; else count none
    with_plus = least_international if least_default is None else min(least_default, least_international)
    without_plus = idd + least_international if least_default is None else min(least_default, idd + least_international)
    return PhoneBounds(without_plus=max(0, without_plus), with_plus=max(0, with_plus))


# The number types phonenumbers tries in `_number_type_helper`: a valid number matches one of them.
_NUMBER_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


@cache
def _national_numbers(region: str) -> tuple[dict[int, re.Pattern], re.Pattern | None] | None:
    """For numbers parsed with default `region` and no plus sign: (length -> pattern that a digit string of that
    length must fully match to be the national number of a VALID number with the region's country code, the
    region's international dialling prefix), or None where this shortcut does not hold (a national-prefix
    transform rule can insert digits).

    Why: is_valid_number needs the national number to match the general description of one of the code's
    regions (length and pattern) and one of its number types. Parsed from a string of ASCII digits and
    punctuation without a plus sign and without the dialling prefix in front, the country code is the
    region's, and the national number is a run of the string's consecutive digits: parsing only takes a
    substring, cuts an extension or a second number off its end, and strips the country code and national
    prefix off its front -- unless a transform rule rewrites that prefix.
    """
    default = PhoneMetadata.metadata_for_region(region)
    if default is None:
        return None
    code = default.country_code
    main = PhoneMetadata.metadata_for_region_or_calling_code(code, region_code_for_country_code(code))
    if default.national_prefix_transform_rule or main.national_prefix_transform_rule:
        return None
    alternatives: dict[int, set[str]] = {}
    for r in COUNTRY_CODE_TO_REGION_CODE[code]:
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, r)
        general = metadata.general_desc
        for length in general.possible_length:
            types = [
                d.national_number_pattern
                for d in (getattr(metadata, t) for t in _NUMBER_TYPES)
                if d is not None
                and d.national_number_pattern
                and (not d.possible_length or length in d.possible_length)
            ]
            if types:
                alternatives.setdefault(length, set()).add(
                    f"(?=(?:{general.national_number_pattern})$)(?:{'|'.join(f'(?:{t})' for t in types)})"
                )
    by_length = {length: re.compile("|".join(sorted(alts))) for length, alts in alternatives.items()}
    idd = re.compile(default.international_prefix) if default.international_prefix else None
    return by_length, idd


_PLAIN = re.compile(r"[0-9\x20-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]*")  # ASCII without letters or controls


def _may_hold_number(candidate: str, bounds: PhoneBounds) -> bool:
    need = bounds.with_plus if any(c in _PLUS_CHARS for c in candidate) else bounds.without_plus
    return sum(map(str.isalnum, candidate)) >= need


def _may_parse_valid(text: str, region: str, bounds: PhoneBounds) -> bool:
    """False only if parsing `text` cannot give a VALID number (`PhoneBounds`, `_national_numbers`)."""
    if not _may_hold_number(text, bounds):
        return False
    national = _national_numbers(region)
    if national is None or "+" in text or not _PLAIN.fullmatch(text):
        return True  # letters, a plus sign or non-ASCII characters: parse it
    by_length, idd = national
    digits = "".join(c for c in text if "0" <= c <= "9")
    if idd is not None and idd.match(digits):
        return True  # may be dialled abroad
    for length, pattern in by_length.items():
        for start in range(len(digits) - length + 1):
            if pattern.fullmatch(digits, start, start + length):
                return True
    return False


class _SkippingMatcher(PhoneNumberMatcher):
    """PhoneNumberMatcher that does not parse strings that cannot be a valid number (`PhoneBounds`,
    `_national_numbers`), and with skip_candidates also drops such candidates before trying their parts.

    Returning None from `_parse_and_verify` spends the same failed tries as the stock method's None, so that
    alone gives the stock matches on any text. Dropping a candidate also skips the tries its parts would have
    cost: exact only while the budget of tries cannot run out (`_tries_cannot_run_out`)."""

    def __init__(self, text: str, region: str, bounds: PhoneBounds, *, skip_candidates: bool):
        super().__init__(text, region, leniency=Leniency.VALID, max_tries=_MAX_TRIES)
        self._bounds = bounds
        self._skip_candidates = skip_candidates

    def _extract_match(self, candidate, offset):
        if self._skip_candidates and not _may_hold_number(candidate, self._bounds):
            return None
        return super()._extract_match(candidate, offset)

    def _parse_and_verify(self, candidate, offset):
        if not _may_parse_valid(candidate, self.preferred_region, self._bounds):
            return None
        return super()._parse_and_verify(candidate, offset)


def _tries_cannot_run_out(text: str) -> bool:
    """Whether phonenumbers' budget of failed tries cannot run out on `text`: each candidate costs at most
    1 + len(_INNER_MATCHES) * (1 + its length) tries, and candidates do not overlap, so a text costs at most
    (1 + 2 * len(_INNER_MATCHES)) * len(text)."""
    return (1 + 2 * len(_INNER_MATCHES)) * len(text) < _MAX_TRIES


def phone_matches(text: str, region: str) -> list:
    """phonenumbers.PhoneNumberMatcher(text, region)'s matches (VALID leniency, default tries), without parsing
    what cannot be a number."""
    return list(_SkippingMatcher(text, region, phone_bounds(region), skip_candidates=_tries_cannot_run_out(text)))


_ANY_DIGIT = re.compile(r"\d")  # Unicode decimal digits, as in phonenumbers' candidate pattern


class SkippingPhoneDetector(PhoneDetector):
    """scrubadub's PhoneDetector through `phone_matches`."""

    def iter_filth(self, text, document_name=None):
        if not _ANY_DIGIT.search(text):  # every candidate holds a decimal digit
            return
        for match in phone_matches(text, self.region):
            yield PhoneFilth(
                beg=match.start,
                end=match.end,
                text=match.raw_string,
                detector_name=self.name,
                document_name=document_name,
                locale=self.locale,
            )


def _guarded(detector_cls, needed):
    """A subclass of detector_cls whose iter_filth runs only on text for which needed(text) is true."""

    class Guarded(detector_cls):
        def iter_filth(self, text, document_name=None):
            if needed(text):
                yield from super().iter_filth(text, document_name=document_name)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{detector_cls.__name__}"
    return Guarded


def _has_at(text: str) -> bool:
    return "@" in text


# Credit card numbers: every alternative of scrubadub's pattern is 13 to 16 consecutive digits ([0-9], or \d in
# its JCB branch), so text without a run of 13 \d (a superset of [0-9]) cannot match.
_THIRTEEN_DIGITS = re.compile(r"\d{13}")
# Credentials: a match holds one of the pattern's own username keywords and one of its password
# keywords. The same alternations with the same flags (re.IGNORECASE, Unicode) find every text that can match;
# for ASCII text, where IGNORECASE is plain ASCII case folding, substring tests on the lowered text do the same
# ~7x faster.
_USER_WORDS, _PASSWORD_WORDS = ("username", "login", "u:"), ("password", "pw", "p:")
_USER_KEYWORD = re.compile("|".join(map(re.escape, _USER_WORDS)), re.IGNORECASE)
_PASSWORD_KEYWORD = re.compile("|".join(map(re.escape, _PASSWORD_WORDS)), re.IGNORECASE)


def _may_hold_credential(text: str) -> bool:
    if text.isascii():
        lowered = text.lower()
        return any(w in lowered for w in _USER_WORDS) and any(w in lowered for w in _PASSWORD_WORDS)
    return _USER_KEYWORD.search(text) is not None and _PASSWORD_KEYWORD.search(text) is not None


GuardedCredentialDetector = _guarded(CredentialDetector, _may_hold_credential)
GuardedTwitterDetector = _guarded(TwitterDetector, _has_at)
GuardedUrlDetector = _guarded(UrlDetector, lambda text: "http" in text or "www." in text)
GuardedCreditCardDetector = _guarded(CreditCardDetector, _THIRTEEN_DIGITS.search)
GuardedSocialSecurityNumberDetector = _guarded(SocialSecurityNumberDetector, _DIGIT.search)


class AtSignEmailDetector(EmailDetector):
    """scrubadub's EmailDetector keeping only matches with an "@" (its pattern also takes a spelled-out " at ");
    text without "@" is skipped."""

    def iter_filth(self, text, document_name=None):
        if "@" not in text:
            return
        for filth in super().iter_filth(text, document_name=document_name):
            if "@" in filth.text:
                yield filth


# scrubadub's detector name -> the faster detector with the same matches
FASTER = {
    "credential": GuardedCredentialDetector,
    "phone": SkippingPhoneDetector,
    "twitter": GuardedTwitterDetector,
    "url": GuardedUrlDetector,
    "credit_card": GuardedCreditCardDetector,
    "social_security_number": GuardedSocialSecurityNumberDetector,
}


def build_scrubber() -> Scrubber:
    """scrubadub's default Scrubber with the "@"-only email detector, each detector swapped for its variant
    here with the same matches, in scrubadub's order (email, replaced, last): the order of merged matches'
    types ("phone+url") is that of the detectors."""
    stock = Scrubber()
    stock.remove_detector("email")
    stock.add_detector(AtSignEmailDetector)
    # scrubadub lists its detectors only in this private dict (insertion order = detection order)
    return Scrubber(
        detector_list=[
            FASTER.get(name, type(detector))(locale=stock._locale) for name, detector in stock._detectors.items()
        ]
    )
