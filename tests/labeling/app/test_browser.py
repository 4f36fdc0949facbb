"""The whole flow in headless Chromium (Debian's /usr/bin/chromium driven by Playwright, no downloaded browser):
an admin creates a project from a tiny checkpoint's samples, a labeler logs in, ranks one task with the keyboard
and another by drag-and-drop, writes a demonstration; `<script>` in a prompt or response shows as text and never
runs; the export holds exactly those answers and `prefer reward` trains on it.

PREFER_SCREENSHOT=docs/figures/labeling_ranking.png also saves the ranking page there (the README's figure)."""

import json
import os
import shutil
from pathlib import Path

from serve_testing import PASSWORD, TOKEN, server, tiny_checkpoint  # noqa: F401 (fixture)

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


def test_admin_labeler_export_reward(browser, tiny_checkpoint, tmp_path):
    db = tmp_path / "labels.db"
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (tmp_path / "responses.jsonl").write_text(
        json.dumps({"prompt": "Which response is safe?", "responses": ["plain text", XSS, "<b>not bold</b>"]}) + "\n"
    )
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - the server process writes it
    with log, server(str(db), log=log, log_level="info") as (base, _):
        admin = browser.new_page()
        admin.goto(f"{base}/admin/login")
        admin.fill("input[name=token]", TOKEN)
        admin.click("button[type=submit]")
        admin.wait_for_url(f"{base}/admin")
        admin.fill("#create-project input[name=name]", "browser")
        admin.fill("#create-project textarea[name=instructions]", "Rank the responses from most to least helpful.")
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
        said(admin, "responses_added")
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
        a, b, c, d = order(page)
        page.locator("#responses li").first.focus()
        for key in ["j", "j", "Shift+ArrowUp", "t", "6", "h"]:
            page.keyboard.press(key)
        assert order(page) == [a, c, b, d]
        page.keyboard.press("?")
        assert page.is_visible("#help")
        page.keyboard.press("?")
        screenshot = tmp_path / "labeling_ranking.png"
        page.set_viewport_size({"width": 1100, "height": 900})
        page.screenshot(path=str(screenshot), full_page=True)
        if os.environ.get("PREFER_SCREENSHOT"):
            Path(os.environ["PREFER_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, os.environ["PREFER_SCREENSHOT"])
        page.keyboard.press("Control+Enter")
        said(page, "submitted")
        keyboard_ranking = [[a, c], b, d]

        # 2. Drag and drop: the last response onto the top half of the first.
        open_task(page, base, tasks["ranking", PROMPTS[1][:200]])
        assert page.text_content("#prompt") == PROMPTS[1]  # the script is text on the page
        w, x, y, z = order(page)
        page.locator("#responses li").nth(3).drag_to(
            page.locator("#responses li").nth(0), target_position={"x": 40, "y": 4}
        )
        assert order(page) == [z, w, x, y]
        page.click("#submit")
        said(page, "submitted")
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
        page.fill("#demonstration", "Waves fold on sand,\nsalt wind carries gull voices,\nthe tide keeps its time.")
        page.keyboard.press("Control+Enter")
        said(page, "submitted")
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
