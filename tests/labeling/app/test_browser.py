"""The whole flow in headless Chromium (Debian's /usr/bin/chromium driven by Playwright, no downloaded browser):
an admin creates a project from a tiny checkpoint's samples, a labeler logs in, ranks one task with the keyboard
and another by drag-and-drop, writes a demonstration; `<script>` in a prompt or response shows as text and never
runs; the export holds exactly those answers and `prefer reward` trains on it. The labeler sees "n of N done", moves
on to the next task after each submission, reads per-kind instructions with their line breaks, has the shortcut help
beside the list and an anchored 1-7 scale. The lead's pages: labelers with progress, assigning a batch, browsing the
answers, and the review of disagreements whose decision the export then uses. Each test runs on SQLite and on
PostgreSQL.

PREFER_SCREENSHOT=docs/figures/labeling_ranking.png also saves the ranking page there (the README's figure)."""

import json
import os
import shutil
from pathlib import Path

import httpx
from serve_testing import (  # noqa: F401 (fixtures)
    ADMIN,
    PASSWORD,
    TOKEN,
    db_url,
    jsonl,
    postgres_url,
    server,
    tiny_checkpoint,
)

from prefer.cli import main
from prefer.data.formats import Demonstration, read_demonstrations, read_rankings

XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
PROMPTS = ["Write a haiku about the sea.", "Explain why the sky is blue. " + XSS]


def order(page) -> list[int]:
    return [int(i) for i in page.locator("#responses li").evaluate_all("els => els.map(e => e.dataset.index)")]


def said(page, text, timeout=30_000):
    """The page's status line once it says `text` or reports an error (then the test fails with the error)."""
    page.wait_for_function(
        "t => { const m = document.getElementById('message');"
        " return m && (m.textContent.includes(t) || m.className === 'error'); }",
        arg=text,
        timeout=timeout,
    )
    message = page.text_content("#message")
    assert text in message, message
    return message


def open_task(page, base, aid):
    page.goto(f"{base}/label/{aid}")
    page.wait_for_selector("body[data-ready='1']")


def submitted_and_advanced(page, base, done: int, total: int) -> int:
    """After a submission: the page says so, shows the new count, and opens the next open task by itself."""
    before = page.url
    said(page, "submitted")
    assert page.text_content("#progress-text") == f"{done} of {total} done"
    page.wait_for_url(lambda url: url != before)
    page.wait_for_selector("body[data-ready='1']")
    return int(page.url.rsplit("/", 1)[1])


def admin_login(page, base):
    page.goto(f"{base}/admin/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    try:
        page.wait_for_url(f"{base}/admin")
    except Exception:
        raise AssertionError(page.text_content("#message")) from None


def test_admin_labeler_export_reward(browser, tiny_checkpoint, tmp_path, db_url):
    db = db_url
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (tmp_path / "responses.jsonl").write_text(
        json.dumps({"prompt": "Which response is safe?", "responses": ["plain text", XSS, "<b>not bold</b>"]}) + "\n"
    )
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - the server process writes it
    with log, server(db, log=log, log_level="info") as (base, _):
        admin = browser.new_page()
        admin_login(admin, base)
        admin.fill("#create-project input[name=name]", "browser")
        admin.fill("#create-project textarea[name=instructions]", "Be honest.\nBe brief.")
        admin.fill(
            "#create-project textarea[name='kind_instructions.ranking']", "Rank the responses, most helpful first."
        )
        admin.fill(
            "#create-project textarea[name='kind_instructions.demonstration']", "Write the reply\nyou would send."
        )
        admin.click("#create-project button")
        admin.wait_for_url(f"{base}/admin/projects/1")
        admin.set_input_files("#upload-prompts input[type=file]", str(tmp_path / "prompts.jsonl"))
        admin.click("#upload-prompts button")
        said(admin, "prompts_added")
        admin.fill("#generate input[name=checkpoint]", str(tiny_checkpoint))
        admin.fill("#generate input[name=max_new_tokens]", "12")
        admin.click("#generate button")
        assert json.loads(said(admin, "generation_id", timeout=120_000))["prompts_with_responses"] == 2
        admin.wait_for_load_state("load")
        admin.set_input_files("#upload-responses input[type=file]", str(tmp_path / "responses.jsonl"))
        admin.click("#upload-responses button")
        # the upload showed its progress: the bar full, the bytes sent (XHR upload events; fetch reports none).
        # Waited for by its own line: the message box may still hold the generation's result, which also names
        # responses_added.
        size = (tmp_path / "responses.jsonl").stat().st_size
        admin.locator("#upload-responses .upload-status", has_text="uploaded").wait_for(timeout=30_000)
        said(admin, "responses_added")
        assert admin.eval_on_selector("#upload-responses progress", "p => [p.hidden, p.value, p.max]") == [
            False,
            size,
            size,
        ]
        assert admin.text_content("#upload-responses .upload-status") == f"uploaded {size / 1024:.1f} KiB"
        admin.goto(f"{base}/admin")
        admin.fill("#create-labeler input[name=username]", "ann")
        admin.fill("#create-labeler input[name=password]", PASSWORD)
        admin.click("#create-labeler button")
        said(admin, "ann")
        admin.goto(f"{base}/admin/projects/1")
        for kind in ("ranking", "demonstration"):
            admin.select_option("#create-tasks select[name=kind]", kind)
            admin.click("#create-tasks button")
            said(admin, "tasks_created")
            admin.wait_for_load_state("load")
            admin.goto(f"{base}/admin/projects/1")
        admin.wait_for_selector("#progress table")
        assert "0 submitted / 6" in admin.text_content("#progress")

        page = browser.new_page()
        page.goto(f"{base}/")
        page.wait_for_url(f"{base}/login")
        page.fill("input[name=username]", "ann")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        page.wait_for_selector("#queue tbody tr")
        rows = page.locator("#queue tbody tr").evaluate_all(
            "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent, r.cells[3].textContent])"
        )
        tasks = {(kind, prompt): int(aid) for aid, kind, prompt in rows}
        assert len(tasks) == 6 and ("ranking", PROMPTS[1][:200]) in tasks  # the queue shows the script as text

        # 1. Keyboard only: focus the first response, j j (third), Shift+Up (it moves to second place), t (tie
        # with the first), 6 (quality), h (harmful), Ctrl+Enter (submit).
        open_task(page, base, tasks["ranking", PROMPTS[0]])
        assert page.text_content("#progress-text") == "0 of 6 done"
        # The ranking page's instructions: the shared text then the ranking text, line breaks kept on screen.
        assert page.inner_text("#instructions") == "Be honest.\nBe brief.\n\nRank the responses, most helpful first."
        anchors = page.locator("#quality .anchor").all_text_contents()
        assert [anchors[0], anchors[3], anchors[6]] == ["very poor", "acceptable", "excellent"]  # under 1, 4, 7
        a, b, c, d = order(page)
        page.locator("#responses li").first.focus()
        for key in ["j", "j", "Shift+ArrowUp", "t", "6", "h"]:
            page.keyboard.press(key)
        assert order(page) == [a, c, b, d]
        assert page.is_checked("#quality input[value='6']")
        page.set_viewport_size({"width": 1280, "height": 800})
        page.keyboard.press("?")
        assert page.is_visible("#help")
        # The help opens beside the list, inside the window (it used to open below the page's end).
        help_box, list_box = page.locator("#help").bounding_box(), page.locator("#responses").bounding_box()
        assert help_box["x"] >= list_box["x"] + list_box["width"] and help_box["x"] + help_box["width"] <= 1280
        assert 0 <= help_box["y"] < 800 and help_box["y"] < list_box["y"] + list_box["height"]
        page.keyboard.press("?")
        screenshot = tmp_path / "labeling_ranking.png"
        page.set_viewport_size({"width": 1100, "height": 900})
        page.screenshot(path=str(screenshot), full_page=True)
        if os.environ.get("PREFER_SCREENSHOT"):
            Path(os.environ["PREFER_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, os.environ["PREFER_SCREENSHOT"])
        page.keyboard.press("Control+Enter")
        # The next open task (the queue's order: the lowest id) opens by itself.
        assert submitted_and_advanced(page, base, 1, 6) == tasks["ranking", PROMPTS[1][:200]]
        keyboard_ranking = [[a, c], b, d]

        # 2. Drag and drop: the last response onto the top half of the first.
        assert page.text_content("#prompt") == PROMPTS[1]  # the script is text on the page
        w, x, y, z = order(page)
        page.locator("#responses li").nth(3).drag_to(
            page.locator("#responses li").nth(0), target_position={"x": 40, "y": 4}
        )
        assert order(page) == [z, w, x, y]
        page.click("#submit")
        assert submitted_and_advanced(page, base, 2, 6) == tasks["ranking", "Which response is safe?"]
        drag_ranking = [z, w, x, y]

        # 3. A response that is a script: shown as text, never run (also checked: the prompt's script above).
        open_task(page, base, tasks["ranking", "Which response is safe?"])
        texts = page.locator("#responses pre").all_text_contents()
        assert XSS in texts and "<b>not bold</b>" in texts and page.locator("#responses b").count() == 0
        assert page.evaluate("window.__xss") is None
        page.keyboard.press("x")  # skip it
        said(page, "skipped")

        # 4. A demonstration, submitted with the keyboard from the text area.
        open_task(page, base, tasks["demonstration", PROMPTS[0]])
        instructions = page.inner_text("#instructions")  # this kind's own, no word of ranking
        assert (
            instructions == "Be honest.\nBe brief.\n\nWrite the reply\nyou would send." and "Rank" not in instructions
        )
        page.fill("#demonstration", "Waves fold on sand,\nsalt wind carries gull voices,\nthe tide keeps its time.")
        page.keyboard.press("Control+Enter")
        assert submitted_and_advanced(page, base, 3, 6) == tasks["demonstration", PROMPTS[1][:200]]
        assert page.evaluate("window.__xss") is None

        download = admin.request.get(f"{base}/api/admin/projects/1/export/rankings.jsonl")  # the admin's session
        assert download.status == 200 and len(download.text().splitlines()) == 2

    logged = (tmp_path / "server.log").read_text()
    assert "POST /api/admin/login" in logged and TOKEN not in logged and PASSWORD not in logged  # never in logs

    out = tmp_path / "export"
    assert main(["export", "--db", str(db), "--project", "browser", "--out", str(out)]) == 0
    rankings = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    by_prompt = {r["prompt"]: r["ranking"] for r in rankings}
    assert by_prompt == {PROMPTS[0]: keyboard_ranking, PROMPTS[1]: drag_ranking}  # exactly those answers
    assert read_rankings(out / "rankings.jsonl")[0].prompt in PROMPTS
    first = next(r for r in rankings if r["prompt"] == PROMPTS[0])
    assert first["provenance"]["quality"] == 6 and first["provenance"]["flags"] == ["harmful"]
    assert first["provenance"]["labeler"] == "ann" and first["provenance"]["generations"] == [1]
    assert read_demonstrations(out / "demonstrations.jsonl") == [
        Demonstration(PROMPTS[0], "Waves fold on sand,\nsalt wind carries gull voices,\nthe tide keeps its time.")
    ]

    # prefer reward trains on the export, unchanged.
    run = tmp_path / "rm"
    assert (
        main(
            [
                "reward",
                f"model.init_from={tiny_checkpoint}",
                f"data.rankings={out / 'rankings.jsonl'}",
                f"data.demonstrations={out / 'demonstrations.jsonl'}",
                f"out_dir={run}",
                "data.validation_fraction=0",
                "train.epochs=3",
                "train.batch_size=1",
                "optimizer.lr=1e-3",
                "runtime.progress=false",
                "train.eval_every=1",
                "train.checkpoint_every=10",
            ]
        )
        == 0
    )
    assert (run / "final" / "prefer.json").exists()


def _labeler(base, username):
    client = httpx.Client(base_url=base)
    csrf = client.post("/api/login", json={"username": username, "password": PASSWORD}).json()["csrf_token"]
    client.headers["X-CSRF-Token"] = csrf
    return client


def test_lead_pages_labelers_assign_browse_review(browser, db_url):
    responses = {
        "Say hi.": ["hi", "hello there", "hey"],
        "Name a colour. " + XSS: ["red", XSS, "green"],
    }
    with server(db_url) as (base, _):
        api = httpx.Client(base_url=base, headers=ADMIN)
        pid = api.post("/api/admin/projects", json={"name": "lead"}).json()["id"]
        api.post(
            f"/api/admin/projects/{pid}/responses",
            content=jsonl({"prompt": p, "responses": r} for p, r in responses.items()),
        )
        for name in ("ann", "bob", "cid"):
            assert api.post("/api/admin/labelers", json={"username": name, "password": PASSWORD}).status_code == 201
        made = api.post(
            f"/api/admin/projects/{pid}/tasks", json={"kind": "ranking", "overlap": 2, "labelers": ["ann", "bob"]}
        )
        assert made.json()["tasks_created"] == 2
        for name, rankings in (("ann", [[0, 1, 2], [0, 1, 2]]), ("bob", [[0, 1, 2], [2, 1, 0]])):
            labeler = _labeler(base, name)
            for item, ranking in zip(labeler.get("/api/queue").json()["assignments"], rankings, strict=True):
                aid = item["assignment_id"]
                assert labeler.post(f"/api/assignments/{aid}/submit", json={"ranking": ranking}).status_code == 201

        page = browser.new_page()
        admin_login(page, base)
        # Labelers: progress per labeler, then cid assigned to both tasks from the page.
        page.goto(f"{base}/admin/projects/{pid}#labelers")
        page.wait_for_selector("#project-labelers tr[data-labeler='cid']")
        row = lambda name: page.locator(f"#project-labelers tr[data-labeler='{name}'] td")  # noqa: E731
        assert row("ann").nth(3).text_content() == "2 / 2" and row("cid").nth(3).text_content() == "0 / 0"
        assert row("cid").nth(6).text_content() == "never" and row("ann").nth(2).text_content() == "active"
        page.check("#project-labelers input[value='cid']")
        page.fill("#assign-form input[name=task_ids]", "1-2")
        page.click("#assign-form button")
        said(page, '"assignments_created":2')
        page.wait_for_function(
            "() => document.querySelector(\"tr[data-labeler='cid'] td:nth-child(4)\").textContent === '0 / 2'"
        )

        # Browse: prompts with every labeler's answer; the script is text.
        page.click("#tab-browse")
        page.wait_for_selector("#browse .prompt-card")
        assert page.locator("#browse .prompt-card").count() == 2
        assert XSS in page.locator("#browse pre").all_text_contents()[1]
        assert "2 > 1 > 0" in page.text_content("#browse")  # bob's ranking of the second prompt
        assert page.evaluate("window.__xss") is None

        # Review: only the disputed task; accept bob's answer, then write a final ranking instead.
        page.click("#tab-review")
        page.wait_for_selector("#review[data-loaded='1'] .review-card")
        assert page.locator(".review-card").count() == 1 and "agreement 0.00" in page.text_content(".review-card h2")
        page.click(".review-card tr[data-labeler='bob'] button.accept")
        page.wait_for_selector(".review-card .decision.decided")
        assert "accepted bob's answer" in page.text_content(".review-card .decision")
        page.fill(".review-card input[name=final]", "1 > 0 = 2")
        page.click(".final-answer button")
        page.wait_for_function(
            "() => document.querySelector('.review-card .decision').textContent.includes('final ranking')"
        )
        assert "final ranking 1 > 0 = 2" in page.text_content(".review-card .decision")
        page.select_option("#review-status", "open")
        page.wait_for_selector("#review >> text=No disagreement to review.")

        rankings = [
            r for r in map(json.loads, api.get(f"/api/admin/projects/{pid}/export/rankings.jsonl").text.splitlines())
        ]
        assert len(rankings) == 3  # 2 agreeing answers + the lead's final ranking
        final = next(r for r in rankings if r["prompt"].startswith("Name a colour."))
        assert final["ranking"] == [1, [0, 2]] and final["provenance"]["labeler"] == "admin"
