"""The review workflow in a real browser: headless Debian Chromium driven by Playwright against ``wbc serve``.

The server has an API token, so the UI first asks for it. Upload real BCCD smear fields (the
bundled sample crop when ../shared/data is absent), wait for the analysis, reclassify a cell with the keyboard and see the differential change, undo, reclassify by
clicking, sign off, export the CSV and open the report. Needs /usr/bin/chromium (skipped without
it, except under CI=true: ``scripts/test_services.sh install`` provides it).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
from service_helpers import BCCD_FIELDS, CELL_FIELD, unavailable

from wbc.service.launcher import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        unavailable("no /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def server(tmp_path):
    with ServerProcess(tmp_path / "data", "--token", "s3cret") as s:  # writes need it: the UI must ask
        yield s


def fields(tmp_path: Path) -> list[Path]:
    bccd = [BCCD_FIELDS / f"BloodImage_0000{i}.jpg" for i in range(3)]
    if all(p.is_file() for p in bccd):
        return bccd
    copies = []  # offline: the bundled crop (a BCCD field at half size with one eosinophil)
    for i in range(2):
        copies.append(tmp_path / f"field{i}.jpeg")
        copies[-1].write_bytes(CELL_FIELD.read_bytes())
    return copies


def count(page, cell_type: str) -> int:
    return int(page.locator(f'#differential tr[data-type="{cell_type}"] td.count').inner_text().split()[0])


def test_review_workflow_in_the_browser(browser, server, tmp_path):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(server.url)
    expect(page.locator("#dialog-title")).to_have_text("API token")
    page.fill("#dialog-input", "s3cret")
    page.click("#dialog-ok")
    expect(page.locator("#token-button")).to_be_visible()
    page.fill("#reviewer", "Ana Tech")
    expect(page.locator("#samples")).to_contain_text("No samples yet")

    # upload with progress, then the sample page polls the analysis
    page.set_input_files("#files", [str(p) for p in fields(tmp_path)])
    expect(page.locator("#upload-text")).to_contain_text("file(s) chosen")
    page.fill("input[name=reference]", "BCCD demo")
    page.fill("input[name=wbc_count]", "7")
    page.click("#upload-button")
    page.wait_for_url("**/#/samples/*")
    expect(page.locator("#sample-state")).to_contain_text("Analysed", timeout=90_000)
    expect(page.locator(".field .box").first).to_be_visible()
    assert page.locator(".cell").count() >= 2

    # the first cell is selected; its type letter is shown next to each type
    tile = page.locator(".cell.selected")
    old, tile_id = tile.get_attribute("data-label"), tile.get_attribute("data-id")
    new, key = ("lymphocyte", "l") if old != "lymphocyte" else ("monocyte", "m")
    before_old, before_new = count(page, old), count(page, new)
    page.keyboard.press(key)
    expect(page.locator(f'#differential tr[data-type="{new}"] td.count')).to_contain_text(str(before_new + 1))
    assert count(page, old) == before_old - 1
    expect(page.locator("#status")).to_contain_text("→")
    page.keyboard.press("Control+z")  # undo: the cell is back, and selected again
    expect(page.locator(f'#differential tr[data-type="{new}"] td.count')).to_contain_text(str(before_new))
    assert count(page, old) == before_old
    expect(page.locator(f'.cell[data-id="{tile_id}"]')).to_have_attribute("aria-pressed", "true")

    # arrows move the selection; a letter reclassifies the selected cell
    first = tile_id
    ahead, back = "ArrowRight", "ArrowLeft"
    if page.locator(".cell").last.get_attribute("data-id") == first:  # the last tile: the selection goes left
        ahead, back = back, ahead
    page.keyboard.press(ahead)
    second = page.locator(".cell.selected").get_attribute("data-id")
    assert second != first
    page.keyboard.press(back)
    assert page.locator(".cell.selected").get_attribute("data-id") == first
    page.keyboard.press(key)
    expect(page.locator(f'#differential tr[data-type="{new}"] td.count')).to_contain_text(str(before_new + 1))
    expect(page.locator(f'.cell[data-id="{first}"] .tag.changed')).to_be_visible()  # "was ..." in words

    # click a cell in a field, then choose a type with the mouse
    page.locator(f'.field .box[data-id="{second}"]').click()
    assert page.locator(".cell.selected").get_attribute("data-id") == second
    other = "monocyte" if page.locator(".cell.selected").get_attribute("data-label") != "monocyte" else "basophil"
    before_other = count(page, other)
    page.locator(f'#chooser button[data-type="{other}"]').click()
    expect(page.locator(f'#differential tr[data-type="{other}"] td.count')).to_contain_text(str(before_other + 1))
    expect(page.locator(f'.cell[data-id="{second}"]')).to_have_attribute("data-label", other)

    if os.environ.get("WBC_SCREENSHOT"):  # the README's picture
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=os.environ["WBC_SCREENSHOT"], full_page=False)

    # sign off: confirmed in a dialog, then the sample is locked
    page.click("#signoff")
    page.click("#dialog-ok")
    expect(page.locator("#sample-state")).to_contain_text("Signed off by Ana Tech")
    locked_counts = count(page, new)
    page.locator(".cell").first.click()
    page.keyboard.press("n" if new != "neutrophil" else "l")
    page.wait_for_timeout(300)
    assert count(page, new) == locked_counts
    assert page.locator("#chooser button.type").first.is_hidden()

    # export CSV and the HTML report
    with page.expect_download() as dl:
        page.click("#export")
    rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
    assert {r["label"] for r in rows} >= {new, other} and {r["signed_off_by"] for r in rows} == {"Ana Tech"}
    assert any(r["reviewed_by"] == "Ana Tech" and r["label"] != r["predicted_label"] for r in rows)
    with context.expect_page() as report_page:
        page.click("#report")
    report = report_page.value
    report.wait_for_load_state()
    expect(report.locator("body")).to_contain_text("Signed off by Ana Tech")

    # back to the list: the sample is there, signed off; files can be dropped on the upload area
    page.goto(server.url + "/#/")
    expect(page.locator("#samples tbody")).to_contain_text("Signed off by Ana Tech")
    transfer = page.evaluate_handle("""async () => {
        const blob = await (await fetch(document.querySelector('#samples a') ? '/api/v1/fields/1/image' : '')).blob();
        const dt = new DataTransfer();
        dt.items.add(new File([blob], 'dropped.jpg', {type: 'image/jpeg'}));
        return dt; }""")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#chosen")).to_contain_text("dropped.jpg")
    expect(page.locator("#upload-button")).to_be_enabled()
    assert not problems, problems
    context.close()
