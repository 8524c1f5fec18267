"""The built report, opened in headless Chromium: images load, no console errors, every section,
no horizontal overflow at phone width (390 px), and a full-page screenshot.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and Python ``playwright``
(``pip install playwright``; no browser download: it drives ``/usr/bin/chromium``). CI installs
both (``.ci/run``).
"""

from __future__ import annotations

import shutil

import pytest

from spinformer.report import build_report, list_sections

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAST = {
    # one or two quick experiments per section, small configs (the page's layout is what is tested)
    "ising_exact_checks": {},
    "attention_seed_table": {},
    "attention_beta_sweep": {"num_betas": 9},
    "hopfield_landscapes": {"grid": 11},
    "mc_published_values": {"sweeps": 20, "chains": 2},
    "mean_field_tap_scaling": {"num_spins": 6},
    "input_dependent_magnetization": {"num_spins": 5},
    "module_anatomy": {"num_tokens": 8, "dim": 8},
    "benchmark_ratios": {"batch": 1, "seq": 8, "dim": 16, "heads": 2, "repeats": 1},
    "sweep_hopfield_scaling": {"sizes": (30, 60), "loads": (0.05, 0.3), "seeds": 2},
    "lens_pretrained": {"num_tokens": 24},
    "training_footnote9": {"seeds": 1, "max_steps": 4},
}

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = build_report(
        out, only=list(FAST), overrides=FAST, cache_dir=tmp_path_factory.mktemp("cache")
    )
    assert result.failures == {}
    return result.path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs Python playwright: pip install playwright"
    )
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=FLAGS, headless=True
        )
        yield context
        context.close()


@pytest.mark.parametrize("width", [390, 1280])
def test_report_in_a_real_browser(report, browser, width, tmp_path):
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(report.as_uri(), wait_until="load")

    images = page.eval_on_selector_all(
        "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])"
    )
    assert images, "the report has no figures"
    assert [alt for alt, complete, natural in images if not complete or natural <= 0] == []
    assert errors == []

    ids = set(page.eval_on_selector_all("section", "els => els.map(e => e.id)"))
    expected = {s.name for s in list_sections() if not s.name.startswith("_test")}
    assert expected <= ids
    toc = page.eval_on_selector_all("nav a", "els => els.map(e => e.getAttribute('href'))")
    assert {f"#{name}" for name in expected} <= set(toc)

    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"horizontal overflow of {overflow} px at {width} px"
    page.screenshot(path=str(tmp_path / f"report-{width}.png"), full_page=True)
    assert (tmp_path / f"report-{width}.png").stat().st_size > 0
    page.close()
