"""The documentation site: `mkdocs build --strict` (mkdocs.yml, Material theme, the API reference generated from the
docstrings by mkdocstrings) passes, strict mode does fail on a broken link and on a missing API reference, and the
built HTML renders in headless Chromium (Debian's /usr/bin/chromium driven by Playwright, as in
tests/labeling/app/test_browser.py): the PHF page's Pareto figure loads, the API reference lists `dpo_loss`, and the
site asks nothing of the network.

Screenshots go to the test's tmp dir (their paths are printed: `pytest -s`); PREFER_DOCS_SCREENSHOTS=DIR also saves
them as DIR/docs_site_phf.png and DIR/docs_site_api.png."""

import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
# Pages in the nav that other work is still writing: until they exist the build uses a copy of docs/ with a one-line
# placeholder for each (every other page, link and reference is checked as it is). Any other missing page fails.
PENDING: set[str] = set()
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material 9.8 prints a banner about its successor on every build


def _require_mkdocs():
    missing = [
        name for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python") if not _found(name)
    ]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: pip install -e '.[docs]'")


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _config_in(tmp: Path, docs: Path, **changes) -> Path:
    """mkdocs.yml with its relative paths made absolute, docs_dir pointing at `docs`, and `changes` applied."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(ROOT / hook) for hook in config.get("hooks", [])]
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            python = plugin["mkdocstrings"]["handlers"]["python"]
            python["paths"] = [str(ROOT / path) for path in python["paths"]]
    config.update(changes)
    path = tmp / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _require_mkdocs()
    tmp = tmp_path_factory.mktemp("docs_site")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = ROOT / config["docs_dir"]
    missing = [page for page in _nav_pages(config["nav"]) if not (docs / page).exists()]
    assert set(missing) <= PENDING, f"mkdocs.yml's nav names pages that do not exist: {sorted(set(missing) - PENDING)}"
    config_file = ROOT / "mkdocs.yml"
    if missing:
        copy = tmp / "docs"
        shutil.copytree(docs, copy)
        for page in missing:
            (copy / page).write_text(f"# {page}\n\nBeing written.\n")
        print(f"\n[docs] placeholders for the pages not written yet: {', '.join(missing)}")
        config_file = _config_in(tmp, copy)
    out = tmp / "site"
    result = _build(config_file, out)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_strict_build_fails_on_a_broken_link_and_a_missing_api_reference(tmp_path):
    """The settings of mkdocs.yml, on two pages: one links to a page that does not exist, one documents a function
    that does not exist. Each must stop the build and be named."""
    _require_mkdocs()
    docs = tmp_path / "docs"
    (docs / "api").mkdir(parents=True)
    (docs / "index.md").write_text("# Home\n\nSee [the manual](no-such-page.md).\n")
    (docs / "api" / "objectives.md").write_text("# API\n\n::: prefer.objectives.no_such_loss\n")
    nav = [{"Home": "index.md"}, {"API": "api/objectives.md"}]
    result = _build(_config_in(tmp_path, docs, nav=nav), tmp_path / "site")
    log = result.stdout + result.stderr
    assert result.returncode != 0, log
    assert "no-such-page.md" in log, log
    assert "prefer.objectives.no_such_loss" in log, log


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(site):
    """The built site over HTTP on 127.0.0.1, as `mkdocs serve` or any static host would serve it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _open(browser, url):
    """A page at `url`, recording every request that leaves 127.0.0.1 (the site must render offline)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = []
    page.on("request", lambda request: None if _local(request.url) else outside.append(request.url))
    page.goto(url, wait_until="load")
    return page, outside


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname == "127.0.0.1"


def _screenshot(page, tmp_path, name):
    path = tmp_path / f"docs_site_{name}.png"
    page.screenshot(path=str(path))
    print(f"\n[docs] screenshot: {path}")
    if os.environ.get("PREFER_DOCS_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["PREFER_DOCS_SCREENSHOTS"]) / path.name)


def test_phf_page_shows_its_figures(browser, served, tmp_path):
    page, outside = _open(browser, f"{served}/phf/")
    figure = page.locator("img[src$='figures/pii_pareto.png']")
    assert figure.count() == 1
    figure.scroll_into_view_if_needed()
    page.wait_for_function("() => [...document.images].every(img => img.complete)")
    assert figure.evaluate("img => img.naturalWidth") > 0
    sizes = page.locator("article img").evaluate_all("imgs => imgs.map(img => [img.src, img.naturalWidth])")
    assert len(sizes) >= 5 and all(width > 0 for _, width in sizes), sizes  # PII, toxicity, PEP8 figures
    # the command that printed the table stays with it, and GitHub's escaped pipes render as plain ones
    text = page.text_content("article")
    assert "prefer experiment --config configs/experiment-pii.yaml" in text
    assert "conditional, prompted <|bad|>" in text
    _screenshot(page, tmp_path, "phf")
    assert not outside, outside


def test_api_reference_lists_the_objectives(browser, served, tmp_path):
    page, outside = _open(browser, f"{served}/api/objectives/")
    heading = page.locator("[id='prefer.objectives.preference.dpo_loss']")
    assert heading.count() == 1
    assert "dpo_loss" in heading.text_content()
    documented = page.locator("h2[id], h3[id], h4[id]").evaluate_all("els => els.map(e => e.id)")
    for name in ("mle_loss", "ranking_loss", "ppo_policy_loss", "grpo_loss", "kto_loss"):
        assert any(anchor.endswith("." + name) for anchor in documented), (name, documented)
    # the docstring's formula and its parameter table were rendered, not dropped
    section = page.locator("div.doc-object:has(> [id='prefer.objectives.preference.dpo_loss'])")
    assert "beta" in section.text_content()
    heading.scroll_into_view_if_needed()
    _screenshot(page, tmp_path, "api")
    stages, _ = _open(browser, f"{served}/api/stages/")
    for anchor in ("prefer.stages.pretrain.pretrain", "prefer.stages.policy_gradient.policy_gradient"):
        assert stages.locator(f"[id='{anchor}']").count() == 1, anchor
    assert not outside, outside
