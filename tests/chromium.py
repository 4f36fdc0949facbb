"""Headless Chromium (Debian's, installed by .ci/run) as the browser tests and scripts/app_screenshots.py launch it.
A plain module, not the conftest, so that a script can import it too."""

CHROMIUM = "/usr/bin/chromium"
# The machine's network is closed: without the background-networking flags Chromium keeps reaching for Google's hosts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
