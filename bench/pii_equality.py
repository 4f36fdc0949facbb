"""Whether prefer's PII matches equal stock scrubadub's on a whole corpus (default: the machine's Debian changelogs).

The reference is scrubadub's default Scrubber with the email detector keeping only matches with an "@", the one
rule prefer.scorers.pii changes on purpose. Prints the number of texts, matches and texts whose matches differ.

    python bench/pii_equality.py [--source changelogs]
"""

from __future__ import annotations

import argparse

import scrubadub
from scrubadub.detectors.email import EmailDetector

from prefer.data.corpora import load_documents
from prefer.scorers import pii


class _AtSignEmail(EmailDetector):
    def iter_filth(self, text, document_name=None):
        for filth in super().iter_filth(text, document_name=document_name):
            if "@" in filth.text:
                yield filth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="changelogs")
    args = parser.parse_args()
    reference = scrubadub.Scrubber()
    reference.remove_detector("email")
    reference.add_detector(_AtSignEmail)
    docs, _ = load_documents(args.source)
    matches = differ = 0
    for doc in docs:
        expected = (
            [
                (f.beg, f.end, "+".join(x.type for x in f.filths) if hasattr(f, "filths") else f.type, f.text)
                for f in reference.iter_filth(doc.text)
            ]
            if doc.text
            else []
        )
        matches += len(expected)
        differ += pii.matches(doc.text) != expected
    print(f"{args.source}: {len(docs)} texts, {matches} reference matches, {differ} texts whose matches differ")


if __name__ == "__main__":
    main()
