# Helpers for scripts/test: a real browser for the console's tests. Debian's Chromium (with CJK
# fonts, so that screenshots show Chinese), and Playwright and openpyxl from PyPI. Playwright
# drives the system Chromium; its own browser download is never used.
# shellcheck shell=bash

ensure_browser() {
    ensure_debian_packages chromium fonts-noto-cjk
    if ! python3 -c 'import playwright.sync_api, openpyxl' >/dev/null 2>&1; then
        echo "installing playwright and openpyxl from PyPI"
        python3 -m pip install --quiet 'playwright>=1.40,<2' 'openpyxl>=3.1,<4'
    fi
    test -x /usr/bin/chromium
}
