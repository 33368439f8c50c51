"""The pages in a real browser: Debian's headless chromium, driven by selenium through the
system's chromedriver (nothing downloads a browser). Classify a photo on the first page, correct
one photo on the review page, check the file on disk and the report; on the review of a
30,000-photo library, go to the last photo, correct a selection and undo it; open a view from its
address and keep a changed filter there; fold the filters on a phone's width; and save a
screenshot of each page (to $NOTCAT_SORT_SCREENSHOTS, default tmp/screenshots/ in the checkout;
docs/ holds copies for the README). Skips where chromium is missing, except under CI, where it fails (prerequisites.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from prerequisites import need_module, unavailable
from serve_support import environment, large_library, library, read_rows, run_cli, start_server, tree
from shared_data import need

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(os.environ.get("NOTCAT_SORT_SCREENSHOTS") or Path(__file__).resolve().parents[1] / "tmp" / "screenshots")


def _missing() -> str | None:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    for module in ("selenium", "starlette"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (the test and serve extras)"
    return None


@pytest.fixture
def browser(tmp_path: Path):
    reason = _missing()
    if reason:
        unavailable(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never fetch a browser or a driver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _all_thumbnails_drawn(driver) -> None:
    _wait(driver, lambda driver: driver.execute_script(
        "const images = [...document.querySelectorAll('#grid img')];"
        "return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0)"))


def test_classify_and_correct_in_a_browser(browser, tmp_path: Path, shared: Path):
    from selenium.webdriver.common.by import By

    env = environment(tmp_path)
    photos, out, report = tmp_path / "photos", tmp_path / "sorted", tmp_path / "run.csv"
    library(shared, photos, cats=8, not_cats=8)
    run_cli(photos, "--move", "--out", out, "--uncertain", "0.2:0.95", "--report", report, "-j", "1", "--no-cache", env=env)
    rows = {row["destination"]: row for row in read_rows(report)}
    server = start_server("--report", report, "--corrections", tmp_path / "fixes", env=env)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        # The classify page: pick a photo, see its label and probability, as the CLI gave them.
        browser.get(f"{server.base}/?token={server.token}")
        photo = next(iter(rows))
        browser.find_element(By.ID, "pick").send_keys(photo)
        card = _wait(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, "#results .card[data-label]"))
        assert card.get_attribute("data-label") == rows[photo]["label"]
        assert f"{float(rows[photo]['p_cat']):.3f}" in card.text
        assert browser.find_element(By.ID, "review-link").is_displayed()

        # The review page: correct the first photo with its button (the other label).
        browser.get(f"{server.base}/review?token={server.token}")
        _wait(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, "body[data-ready]"))
        assert len(browser.find_elements(By.CSS_SELECTOR, ".card[data-entry]")) == len(rows)
        _all_thumbnails_drawn(browser)
        first = browser.find_element(By.CSS_SELECTOR, ".card")
        was = first.get_attribute("data-label")
        path = Path(first.find_element(By.CSS_SELECTOR, ".name").get_attribute("title"))
        other = "not-cat" if was == "cat" else "cat"
        first.find_element(By.CSS_SELECTOR, f"button[data-label='{other}']").click()
        _wait(browser, lambda driver: first.get_attribute("data-label") == other)
        assert f"was {was}" in first.text
        browser.save_screenshot(str(SCREENSHOTS / "serve-review.png"))

        # The file moved to the other label's folder, and the report says so.
        moved = out / other / path.relative_to(out / was)
        assert moved.is_file() and not path.exists()
        assert hashlib.sha256(moved.read_bytes()).hexdigest() == rows[str(path)]["sha256"]
        last = read_rows(report)[-1]
        assert (last["path"], last["destination"], last["status"], last["label"]) == (str(path), str(moved), "done", other)

        # A key press corrects the next photo (n: not-cat, c: cat), and the page says so.
        second = browser.find_elements(By.CSS_SELECTOR, ".card")[1]
        key = "c" if second.get_attribute("data-label") != "cat" else "n"
        second.click()
        second.send_keys(key)
        _wait(browser, lambda driver: second.get_attribute("data-label") == ("cat" if key == "c" else "not-cat"))
        assert len(read_rows(tmp_path / "fixes" / "corrections.csv")) == 2
    finally:
        server.stop()
    _copy_to_docs("serve-review.png")


def _copy_to_docs(*names: str) -> None:
    docs = Path(__file__).resolve().parents[1] / "docs"
    if os.environ.get("NOTCAT_SORT_UPDATE_DOCS") == "1":  # refresh the README's copies
        for name in names:
            shutil.copyfile(SCREENSHOTS / name, docs / name)


def test_a_library_of_30000_photos_in_a_browser(browser, tmp_path: Path, shared: Path):
    """The page holds only the cards on screen; End goes to the last photo (fetching its page); a
    click and a shift-click select three photos, `c` corrects them, and undo puts back the files and
    the corrections folder as they were."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, report = large_library(shared, tmp_path, 30_000)
    fixes = tmp_path / "fixes"
    server = start_server("--report", report, "--corrections", fixes, env=environment(tmp_path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        browser.get(f"{server.base}/review?token={server.token}")
        _wait(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, "body[data-ready]"))
        _all_thumbnails_drawn(browser)
        assert 0 < len(browser.find_elements(By.CSS_SELECTOR, "[data-entry]")) <= 1000
        assert "30,000" in browser.find_element(By.CSS_SELECTOR, "#labels [data-label=all]").text

        ActionChains(browser).send_keys(Keys.END).perform()
        last = _wait(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, ".card[data-index='29999'][data-entry]"))
        assert browser.switch_to.active_element == last
        assert 0 < len(browser.find_elements(By.CSS_SELECTOR, "[data-entry]")) <= 1000
        _all_thumbnails_drawn(browser)

        # the last three photos: click the first, shift-click the last, correct them to cat with `c`
        cards = [browser.find_element(By.CSS_SELECTOR, f".card[data-index='{index}']") for index in (29997, 29998, 29999)]
        chosen = [(card.get_attribute("data-label"), Path(card.find_element(By.CSS_SELECTOR, ".name").get_attribute("title")))
                  for card in cards]
        assert {label for label, _ in chosen} == {"not-cat"}
        before = tree(out)
        cards[0].find_element(By.CSS_SELECTOR, ".name").click()
        ActionChains(browser).key_down(Keys.SHIFT).click(cards[2].find_element(By.CSS_SELECTOR, ".name")).key_up(Keys.SHIFT).perform()
        _wait(browser, lambda driver: "3 selected" in driver.find_element(By.ID, "selected-count").text)
        ActionChains(browser).send_keys("c").perform()
        _wait(browser, lambda driver: all(card.get_attribute("data-label") == "cat" for card in cards))
        assert browser.find_element(By.ID, "undo").text == "undo (3)"
        for _, path in chosen:
            assert not path.exists() and (out / "cat" / path.relative_to(out / "not-cat")).is_file()
        assert len(list((fixes / "cat").iterdir())) == 3 and len(read_rows(fixes / "corrections.csv")) == 3
        browser.save_screenshot(str(SCREENSHOTS / "serve-review-library.png"))

        browser.find_element(By.ID, "undo").click()
        _wait(browser, lambda driver: all(card.get_attribute("data-label") == "not-cat" for card in cards))
        assert tree(out) == before
        assert list((fixes / "cat").iterdir()) == [] and read_rows(fixes / "corrections.csv") == []
    finally:
        server.stop()
    _copy_to_docs("serve-review-library.png")


def test_the_review_page_keeps_its_view_in_its_address(browser, tmp_path: Path, shared: Path):
    """A link to /review?label=cat&folder=...&order=path opens that view with its controls set; a filter
    changed on the page goes into the address at once, so a reload (or a bookmark) shows the same photos."""
    from selenium.webdriver.common.by import By

    _, report = large_library(shared, tmp_path, 1200)
    server = start_server("--report", report, "--corrections", tmp_path / "fixes", env=environment(tmp_path))

    def shown() -> str:
        return browser.find_element(By.ID, "selected-count").text

    def total(**query: str) -> int:
        return server.client().get("/api/review", params={"token": server.token, **query}).json()["total"]

    try:
        asked = {"label": "cat", "folder": "2015/02", "order": "path"}
        expected = total(**asked)
        assert 0 < expected < total(label="cat")
        browser.get(f"{server.base}/review?token={server.token}&label=cat&folder=2015/02&order=path")
        _wait(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, "body[data-ready]"))
        assert shown() == f"{expected:,} shown, none selected"
        assert "on" in browser.find_element(By.CSS_SELECTOR, "#labels [data-label=cat]").get_attribute("class")
        assert browser.find_element(By.CSS_SELECTOR, "input[name=folder]").get_attribute("value") == "2015/02"
        assert browser.find_element(By.ID, "order").get_attribute("value") == "path"
        names = [card.find_element(By.CSS_SELECTOR, ".name").get_attribute("title")
                 for card in browser.find_elements(By.CSS_SELECTOR, ".card[data-entry]")]
        assert names and all("/cat/2015/02/" in name for name in names) and names == sorted(names)

        low = browser.find_element(By.CSS_SELECTOR, "input[name=p_cat_min]")
        low.send_keys("0.95")
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", low)
        narrower = total(**asked, p_cat_min="0.95")
        _wait(browser, lambda driver: "p_cat_min=0.95" in driver.current_url and shown().startswith(f"{narrower:,} shown"))
        browser.refresh()
        _wait(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, "body[data-ready]"))
        assert shown() == f"{narrower:,} shown, none selected"
        assert browser.find_element(By.CSS_SELECTOR, "input[name=p_cat_min]").get_attribute("value") == "0.95"
        assert f"token={server.token}" in browser.current_url  # the page still works after the reload
    finally:
        server.stop()


def test_the_review_toolbar_folds_its_filters_on_a_phone(browser, tmp_path: Path, shared: Path):
    """At 420 px the filters but the label, and the order, fold behind one button that counts those in use,
    so the toolbar leaves most of the screen to the photos; at 1280 px they are all in view."""
    from selenium.webdriver.common.by import By

    _, report = large_library(shared, tmp_path, 600)
    server = start_server("--report", report, "--corrections", tmp_path / "fixes", env=environment(tmp_path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        browser.set_window_size(420, 900)
        browser.get(f"{server.base}/review?token={server.token}&folder=2015")
        _wait(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, "body[data-ready]"))
        _all_thumbnails_drawn(browser)
        folder = browser.find_element(By.CSS_SELECTOR, "input[name=folder]")
        button = browser.find_element(By.ID, "filters-button")
        assert not folder.is_displayed() and button.text == "filters (1)"
        toolbar, screen = browser.execute_script(
            "return [document.getElementById('toolbar').getBoundingClientRect().height, window.innerHeight]")
        browser.save_screenshot(str(SCREENSHOTS / "serve-review-420.png"))
        assert toolbar < 0.25 * screen, (toolbar, screen)
        button.click()
        _wait(browser, lambda driver: folder.is_displayed())
        assert folder.get_attribute("value") == "2015" and button.get_attribute("aria-expanded") == "true"
        assert browser.find_element(By.ID, "order").is_displayed()
        button.click()  # folded again, and then on a wide screen: every filter in view, no button
        _wait(browser, lambda driver: not folder.is_displayed())
        browser.set_window_size(1280, 900)
        _wait(browser, lambda driver: folder.is_displayed() and not button.is_displayed())
        assert browser.find_element(By.ID, "order").is_displayed()
    finally:
        server.stop()


def test_name_a_cat_and_the_next_run_sorts_its_photos_under_the_name(browser, tmp_path: Path, shared: Path):
    """Photos of two campus cats, grouped by a --group-cats run: five of each are selected (Ctrl-click)
    and named on the page, and the next run with --known-cats puts them, and others of that cat, in cat/Tom/."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    env = environment(tmp_path)
    photos, known = tmp_path / "photos", tmp_path / "known"
    tom, other = "8d2ee5cf67", "8d2ee5cf93"  # campus cats with many photos
    for cat in (tom, other):
        for photo in sorted((shared / "datasets" / "catnotcat" / "cat").glob(f"campus-cats-{cat}_*")):
            (photos / cat[-2:]).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, photos / cat[-2:] / photo.name)
    report = tmp_path / "run.csv"
    run_cli(photos, "--copy", "--group-cats", "--out", tmp_path / "sorted", "--report", report, "-j", "1", env=env)
    server = start_server("--report", report, "--known-cats", known, env=env)
    try:
        browser.get(f"{server.base}/review?token={server.token}&")
        _wait(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, "body[data-ready]"))
        browser.find_element(By.CSS_SELECTOR, "#order option[value=path]").click()
        _wait(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, ".card[data-index='0'][data-entry]"))
        _all_thumbnails_drawn(browser)
        chosen = {}
        for cat, name in ((tom, "Tom"), (other, "Mia")):
            cards = [card for card in browser.find_elements(By.CSS_SELECTOR, ".card[data-entry]")
                     if f"campus-cats-{cat}" in card.find_element(By.CSS_SELECTOR, ".name").get_attribute("title")][:5]
            assert len(cards) == 5
            chosen[name] = {Path(card.find_element(By.CSS_SELECTOR, ".name").get_attribute("title")).name for card in cards}
            browser.find_element(By.ID, "select-none").click()
            for card in cards:
                ActionChains(browser).key_down(Keys.CONTROL).click(card.find_element(By.CSS_SELECTOR, "img")).key_up(Keys.CONTROL).perform()
            _wait(browser, lambda driver: "5 selected" in driver.find_element(By.ID, "selected-count").text)
            field = browser.find_element(By.ID, "cat-name")
            field.clear()
            field.send_keys(name, Keys.ENTER)
            _wait(browser, lambda driver, name=name: f"named {name}" in driver.find_element(By.ID, "status").text)
            assert all(name in card.find_element(By.CSS_SELECTOR, ".meta").text for card in cards)
        assert "Mia (5), Tom (5)" in browser.find_element(By.ID, "known-cats").text
        browser.save_screenshot(str(SCREENSHOTS / "serve-review-cats.png"))
    finally:
        server.stop()
    for name, names in chosen.items():
        assert {path.name.split("-", 1)[1] for path in (known / name).iterdir()} == names

    out = tmp_path / "next"
    rows = read_rows_of(run_cli(photos, "--copy", "--group-cats", "--known-cats", known, "--out", out,
                                "--report", "-", "-j", "1", env=env).stdout)
    toms = [Path(row["path"]) for row in rows if row["cat_id"] == "Tom"]
    assert chosen["Tom"] <= {path.name for path in toms} and len(toms) > len(chosen["Tom"])
    assert sum(f"campus-cats-{tom}" in path.name for path in toms) >= 0.9 * len(toms)
    assert {path.name for path in (out / "cat" / "Tom").rglob("*.jpg")} == {path.name for path in toms}
    _copy_to_docs("serve-review-cats.png")


def read_rows_of(text: str) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_the_classify_page_shows_every_format_it_classifies_in_order_at_1280_and_420_px(browser, tmp_path: Path,
                                                                                         shared: Path):
    """A JPEG, a phone's HEIC and a camera's RAF picked together: each shown (a thumbnail the server drew,
    since a browser cannot show HEIC or RAW), with the CLI's label and p_cat, in the order picked; the
    page fits at 1280 and at 420 px without scrolling sideways; the favicon is there."""
    from selenium.webdriver.common.by import By

    env = environment(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    picked = [need(shared / "samples" / "heic" / "iphone_13_pro_max.HEIC"), need(shared / "samples" / "raw" / "FujiFilm.raf"),
              sorted((shared / "datasets" / "catnotcat" / "cat").glob("oxford-full-cat-*"))[0]]
    for photo in picked:
        shutil.copyfile(photo, photos / photo.name)
    report = tmp_path / "cli.csv"
    run_cli(photos, "--full-decode", "--report", report, "-j", "1", "--no-cache", env=env)  # as the server decodes
    cli = {Path(row["path"]).name: row for row in read_rows(report)}
    assert {row["source"] for row in cli.values()} == {"image", "preview"}
    server = start_server(env=env)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        for width, shot in ((1280, "serve-classify.png"), (420, "serve-classify-420.png")):
            browser.set_window_size(width, 1000)
            browser.get(f"{server.base}/?token={server.token}")
            assert browser.execute_script("return window.innerWidth") <= width
            browser.find_element(By.ID, "pick").send_keys("\n".join(str(photos / photo.name) for photo in picked))
            _wait(browser, lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#results .card[data-label]")) == 3)
            _wait(browser, lambda driver: driver.execute_script(
                "return [...document.querySelectorAll('#results img')].every((img) => img.complete && img.naturalWidth > 0)"))
            cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
            assert [card.find_element(By.CSS_SELECTOR, ".name").text for card in cards] == [p.name for p in picked]
            for card, photo in zip(cards, picked, strict=True):
                row = cli[photo.name]
                assert card.get_attribute("data-label") == row["label"], (photo.name, card.text)
                assert f"{float(row['p_cat']):.3f}" in card.text
            layout = browser.execute_script("""
                const pick = document.querySelector('label[for=pick]').getBoundingClientRect();
                return {overflow: document.documentElement.scrollWidth - window.innerWidth,
                        pick: [pick.left, pick.right, pick.height], width: window.innerWidth,
                        line: parseFloat(getComputedStyle(document.body).fontSize)};""")
            assert layout["overflow"] <= 0, layout  # nothing wider than the window
            left, right, height = layout["pick"]
            assert left >= 0 and right <= layout["width"] and height < 3 * layout["line"], layout  # one line, in view
            browser.save_screenshot(str(SCREENSHOTS / shot))
        icon = browser.execute_async_script(
            "const done = arguments[0]; fetch('/favicon.ico').then((r) => done([r.status, r.headers.get('content-type')]));")
        assert icon[0] == 200 and icon[1].startswith("image/"), icon
    finally:
        server.stop()
    _copy_to_docs("serve-classify.png", "serve-classify-420.png")


def test_the_classify_page_shows_a_cats_top_five_breeds_and_its_mood(browser, tmp_path: Path, shared: Path):
    """From a model with breed and mood heads (the shipped one, or it given heads: tests/attribute_models.py),
    each cat's card lists the five likeliest breeds with their probabilities, as the API gives them, and
    the mood marked as a guess; a photo of no cat lists none."""
    from selenium.webdriver.common.by import By

    from notcat_sort.model import default_model_path, load_card

    model = default_model_path()
    if not load_card(model).attributes:
        need_module("onnx", "the train extra: pip install '.[train]'")
        from attribute_models import with_heads

        model = with_heads(model, tmp_path / "heads" / model.name, confident=0.7)
    env = environment(tmp_path)
    breeds = need(shared / "datasets" / "breeds")
    picked = [sorted((breeds / breed).glob("*.jpg"))[0] for breed in ("Siamese", "Maine_Coon")]
    picked.append(sorted((shared / "datasets" / "catnotcat" / "not-cat").iterdir())[0])
    server = start_server("--model", model, env=env)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with server.client() as client:
            answers = [client.post("/api/classify", content=photo.read_bytes()).json() for photo in picked]
        browser.set_window_size(1280, 1000)
        browser.get(f"{server.base}/?token={server.token}")
        browser.find_element(By.ID, "pick").send_keys("\n".join(str(photo) for photo in picked))
        _wait(browser, lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#results .card[data-label]")) == 3)
        for card, answer in zip(browser.find_elements(By.CSS_SELECTOR, "#results .card"), answers, strict=True):
            items = card.find_elements(By.CSS_SELECTOR, ".breeds li")
            if answer["label"] == "not-cat":
                assert not items and "mood" not in card.text
                continue
            shown = [(item.find_element(By.CSS_SELECTOR, ".breed").text, item.find_element(By.CSS_SELECTOR, ".p").text)
                     for item in items]
            assert shown == [(breed["name"], f"{breed['p']:.2f}") for breed in answer["breeds"]], card.text
            assert f"mood: {answer['mood']['name']}" in card.text and "a guess" in card.text
        assert {answer["label"] for answer in answers} >= {"cat", "not-cat"}
        browser.save_screenshot(str(SCREENSHOTS / "serve-classify-breeds.png"))
    finally:
        server.stop()
    _copy_to_docs("serve-classify-breeds.png")
