#!/usr/bin/env bash
# Headless Debian Chromium for the app's Playwright test.
exec bash tests/app/setup_browser.sh
