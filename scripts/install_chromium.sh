#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium and its WebDriver for the UI screenshot test
# (tests/test_ui.py). Does nothing when both are already there. Needs root (CI runs as root);
# without root it says so and exits 0, and the browser test skips itself.
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi
if [[ "$(id -u)" != "0" ]]; then
    echo "install_chromium.sh: not root; skipping (the browser test will skip itself)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: no apt-get; skipping (the browser test will skip itself)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
