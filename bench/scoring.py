"""Corpus scoring speed: `prefer corpus`'s scoring (prefer.data.annotate) against calling the library directly.

    python bench/scoring.py --task pii [--documents N] [--pairs 3] [--workers 1 2]

pii: the machine's Debian changelogs (the pii task's corpus), one text per changelog entry; the baseline is
scrubadub's default Scrubber over each entry's text, as a user would call it. pep8: the Python standard library
(the pep8 task's corpus); the baseline is pycodestyle's default Checker over each file. prefer scores the same
documents with annotate(documents, task, workers=W), as `prefer corpus data.workers=W` does (without its cache).

Every run is a fresh Python process, so each pays its own start-up (imports: scrubadub imports nltk), and the
runs alternate: baseline, prefer (each worker count), then the other way round. Printed: wall seconds of each
run from process start to the last score (min and median over the pairs), the part spent on imports and
construction, and the ratio baseline / prefer.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Run in a child process: prints {"startup": s, "total": s} (seconds since the child's interpreter started).
CHILD = r"""
import json, pickle, sys, time
start = float(sys.argv[3])
task, path = sys.argv[1], sys.argv[2]
workers = int(sys.argv[4]) if len(sys.argv) > 4 else 0
docs = pickle.load(open(path, "rb"))
if workers == 0 and task == "pii":
    import scrubadub
    scrubber = scrubadub.Scrubber()
    ready = time.time()
    found = sum(len(list(scrubber.iter_filth(d.text))) for d in docs)
elif workers == 0:
    import pycodestyle
    style = pycodestyle.StyleGuide(quiet=True)
    ready = time.time()
    files = {id(d.context.segments): d.context.segments if d.context is not None else d.segments for d in docs}
    found = 0
    for segments in files.values():  # each file once, as annotate scores it
        lines = "".join(segments).splitlines(keepends=True)
        found += pycodestyle.Checker(lines=lines, options=style.options).check_all()
else:
    from prefer.data.annotate import annotate
    ready = time.time()
    out = annotate(docs, task, workers=workers, progress=False)
    found = sum(1 for d in out for s in d.scores if s > 0)
print(json.dumps({"startup": ready - start, "total": time.time() - start, "found": found}))
"""


def _documents(task: str, limit: int | None):
    from prefer.data.corpora import load_documents

    docs, _ = load_documents("changelogs" if task == "pii" else "stdlib")
    if not limit:
        return docs
    if task == "pii":
        step = max(1, len(docs) // limit)  # a fixed spread over the corpus
        return docs[::step][:limit]
    # pep8: the documents of `limit` files spread over the corpus (a file is scored whole, in one piece)
    files = list(dict.fromkeys(id(d.context.segments) for d in docs))
    keep = set(files[:: max(1, len(files) // limit)][:limit])
    return [d for d in docs if id(d.context.segments) in keep]


def _run(task: str, path: Path, workers: int) -> dict:
    import time

    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, task, str(path), repr(started), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("pii", "pep8"), required=True)
    parser.add_argument("--documents", type=int, default=None, help="a fixed spread of this many (pep8: files)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    docs = _documents(args.task, args.documents)
    chars = sum(len(d.text) for d in docs)
    runs = {"baseline": 0} | {f"prefer workers={w}": w for w in args.workers}
    results: dict[str, list[dict]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "docs.pkl")
        path.write_bytes(pickle.dumps(docs))
        for pair in range(args.pairs):
            order = list(runs) if pair % 2 == 0 else list(runs)[::-1]
            for name in order:
                results[name].append(_run(args.task, path, runs[name]))
    baseline = "scrubadub Scrubber()" if args.task == "pii" else "pycodestyle Checker"
    print(
        f"{args.task}: {len(docs)} documents, {chars} characters; {args.pairs} alternating pairs; "
        f"baseline = {baseline} in one process"
    )
    for name, rs in results.items():
        totals = [r["total"] for r in rs]
        startups = [r["startup"] for r in rs]
        print(
            f"  {name:18s} total min {min(totals):6.2f} s median {statistics.median(totals):6.2f} s "
            f"(start-up median {statistics.median(startups):5.2f} s)"
        )
    base = [r["total"] for r in results["baseline"]]
    for name in runs:
        if name != "baseline":
            ours = [r["total"] for r in results[name]]
            print(
                f"  speed-up of {name} over the baseline: {min(base) / min(ours):.2f}x (mins), "
                f"{statistics.median(base) / statistics.median(ours):.2f}x (medians)"
            )


if __name__ == "__main__":
    main()
