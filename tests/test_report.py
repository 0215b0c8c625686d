"""The report: thumbnails by hand, and hardness_scores.py's ranking CSV and report on a folder of images and on a
table, opened in a real browser (headless Chromium from Debian's chromium package, driven by selenium through
Debian's chromium-driver): every thumbnail renders, no console error, nothing loaded from outside the page, the
sample ids are the CSV's top rows, and ids and class names shaped like HTML tags show as text and run nothing."""
import csv
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from PIL import Image

import hardness_scores
from hardness.report import thumbnail

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), Path("/usr/bin/chromedriver")
HOSTILE_FILE = "<img src=x onerror=alert(1)>.png"            # a file name that is an HTML tag with a script attribute
HOSTILE_CLASS = "<svg onload=alert(2)>"                       # a class folder named like one
HOSTILE_ID = "<img src=x onerror=alert(3)>"                   # a CSV id named like one
FLAGS = ["--recipe", "paper", "--runs", "2", "--epochs", "20", "--score_epoch", "5", "--trajectory_every", "5", "--cleanlab_folds", "2",
         "--seed", "1", "--device", "cpu"]


def test_thumbnails_stretch_each_sample_to_its_own_range():
    """(v - min) / (max - min) * 255, rounded: [-1, 0, 1, 3] -> 0, 63.75, 127.5, 255 -> 0, 64, 128, 255."""
    grey = thumbnail(np.array([[[-1.0, 0.0], [1.0, 3.0]]]))
    assert grey.mode == "L" and np.asarray(grey).tolist() == [[0, 64], [128, 255]]
    rgb = thumbnail(np.array([[[0.0]], [[1.0]], [[2.0]]]))
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, 0].tolist() == [0, 128, 255]
    assert np.asarray(thumbnail(np.full((1, 2, 2), 0.7))).tolist() == [[0, 0], [0, 0]]     # a flat sample is black


def write_pets(root: Path) -> None:
    """Three class folders of 12 greyscale 8x8 PNGs (a template per class plus noise); the first cat image is named
    like an HTML tag, and the second class folder too."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, size=(3, 8, 8))
    for c, name in enumerate(["cat", HOSTILE_CLASS, "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(templates[c] + rng.normal(0, 30, size=(8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / (HOSTILE_FILE if (c, i) == (0, 0) else f"{i:02d}.png"))


def write_table(path: Path) -> None:
    """30 rows of 3 features in 2 classes, the first row's id named like an HTML tag."""
    rng = np.random.default_rng(1)
    lines = ["name,label,a,b,c"]
    for i in range(30):
        values = rng.normal(size=3) + (i % 2) * 2
        lines.append(f"\"{HOSTILE_ID if i == 0 else f'row{i}'}\",{'yes' if i % 2 else 'no'},"
                     + ",".join(f"{v:.4f}" for v in values))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """hardness_scores.py on the folder (every sample in the report's top) and on the table."""
    folder = tmp_path_factory.mktemp("report")
    write_pets(folder / "pets")
    write_table(folder / "farm.csv")
    common = [*FLAGS, "--data_root", str(folder / "data"), "--results_dir", str(folder / "Results"), "--figures_dir",
              str(folder / "Figures")]
    hardness_scores.main(hardness_scores.parse_args(["--dataset_name", f"folder:{folder / 'pets'}",
                                                     "--subset_size", "36", "--report_top", "36", *common]))
    hardness_scores.main(hardness_scores.parse_args(["--dataset_name", f"csv:{folder / 'farm.csv'}", "--id_column",
                                                     "name", "--subset_size", "30", "--report_top", "10", *common]))
    return {"folder": folder / "Results/scores/pets_36_0_report.html",
            "table": folder / "Results/scores/farm_30_0_report.html"}


def csv_rows(report: Path) -> list[dict]:
    with open(report.with_name(report.name.replace("_report.html", "_ranking.csv")), newline="") as handle:
        return list(csv.DictReader(handle))


class Links(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.targets += [(name, value or "") for name, value in attrs if name in ("src", "href")]


@pytest.mark.parametrize("kind", ["folder", "table"])
def test_the_page_loads_nothing_from_outside_and_escapes_the_data(reports, kind):
    html = reports[kind].read_text()
    links = Links()
    links.feed(html)
    assert links.targets and all(value.startswith("data:image/png;base64,") for name, value in links.targets
                                 if name == "src")
    assert [value for name, value in links.targets if name == "href"] == [
        "./" + reports[kind].name.replace("_report.html", "_ranking.csv")]
    assert "http:" not in html and "https:" not in html and "<script" not in html
    hostile = HOSTILE_FILE if kind == "folder" else HOSTILE_ID
    assert hostile not in html and hostile.replace("<", "&lt;").replace(">", "&gt;") in html
    if kind == "folder":
        assert HOSTILE_CLASS not in html and "&lt;svg onload=alert(2)&gt;" in html


def test_a_table_shows_its_rows_instead_of_thumbnails(reports):
    html = reports["table"].read_text()
    assert 'class="thumbnail"' not in html and '<table id="top">' in html
    assert html.count('<tr class="sample') == 10                               # --report_top 10
    top = csv_rows(reports["table"])[0]
    assert top["given_label"] in ("no", "yes") and {"sample_id", "predicted_label", "consensus_rank"} <= set(top)
    assert "<th>a</th><th>b</th><th>c</th></tr>" in html                   # the CSV's column names
    with open(reports["table"].parents[2] / "farm.csv", newline="") as handle:
        read = next(row for row in csv.DictReader(handle) if row["name"] == top["sample_id"])
    row_html = next(row for row in html.split("<tr") if f'<td class="sample-id">{escape(top["sample_id"])}</td>' in row)
    assert "".join(f"<td>{float(read[c]):.3g}</td>" for c in "abc") + "</tr>" in row_html          # as read


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through the system chromedriver; Selenium Manager is never asked for anything."""
    if not (CHROMIUM and CHROMEDRIVER.is_file()):
        missing = ("no Chromium installed (Debian's chromium and chromium-driver): scripts/install_browser.sh "
                   "installs them")
        if os.environ.get("HARDNESS_REQUIRE_BROWSER"):                 # CI installed them: a skip would hide a failure
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def no_download(*args, **kwargs):
        raise AssertionError("Selenium Manager was asked for a driver or browser")
    patch = pytest.MonkeyPatch()
    patch.setattr(SeleniumManager, "binary_paths", no_download)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()
    patch.undo()


@pytest.mark.parametrize("kind", ["folder", "table"])
def test_the_report_in_a_real_browser(reports, browser, kind):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    browser.get_log("browser")                                          # drop what an earlier page logged
    browser.get(reports[kind].as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    images = browser.find_elements(By.CSS_SELECTOR, "img")
    widths = [browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
              for image in images]
    assert images and all(width > 0 for width in widths), widths
    thumbnails = browser.find_elements(By.CSS_SELECTOR, "img.thumbnail")
    assert len(thumbnails) >= (36 if kind == "folder" else 0)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    shown = [element.text for element in browser.find_elements(By.CSS_SELECTOR, "#top .sample .sample-id")]
    rows = csv_rows(reports[kind])
    assert shown == [row["sample_id"] for row in rows[:len(shown)]] and len(shown) == (36 if kind == "folder" else 10)
    hostile = f"cat/{HOSTILE_FILE}" if kind == "folder" else HOSTILE_ID
    assert hostile in shown                                              # shown as its name, as text
    assert not browser.find_elements(By.CSS_SELECTOR, 'img[src="x"], svg')    # no element made of the data
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text                                    # and no script of it ran
    if kind == "folder":
        assert HOSTILE_CLASS in browser.find_element(By.TAG_NAME, "body").text


HOSTILE_COPY = "<img src=y onerror=alert(4)>.png"             # an exact copy named like an HTML tag


@pytest.fixture(scope="module")
def copies_report(tmp_path_factory) -> Path:
    """hardness_scores.py (the fast recipe, a folder's default) on three classes of 12 noisy 16x16 images, with an
    exact copy of cat/01.png (named like an HTML tag) and a copy of dog/02.png whose ten pixels are 2 levels
    brighter."""
    folder = tmp_path_factory.mktemp("copies")
    rng = np.random.default_rng(3)
    templates = rng.integers(40, 216, size=(3, 16, 16))
    for c, name in enumerate(["cat", "cow", "dog"]):
        (folder / "pets" / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(templates[c] + rng.normal(0, 30, size=(16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / "pets" / name / f"{i:02d}.png")
    shutil.copy(folder / "pets/cat/01.png", folder / "pets/cat" / HOSTILE_COPY)
    altered = np.asarray(Image.open(folder / "pets/dog/02.png")).copy()
    altered.flat[:10] = np.minimum(altered.flat[:10].astype(int) + 2, 255)
    Image.fromarray(altered).save(folder / "pets/dog/altered_02.png")
    hardness_scores.main(hardness_scores.parse_args([
        "--dataset_name", f"folder:{folder / 'pets'}", "--runs", "2", "--epochs", "3", "--seed", "0", "--device",
        "cpu", "--data_root", str(folder / "data"), "--results_dir", str(folder / "Results"), "--figures_dir",
        str(folder / "Figures")]))
    return folder / "Results/scores/pets_38_0_fast_report.html"


def test_near_duplicates_in_a_folder_name_each_other(copies_report):
    rows = {row["sample_id"]: row for row in csv_rows(copies_report)}
    for first, second in ((f"cat/{HOSTILE_COPY}", "cat/01.png"), ("dog/altered_02.png", "dog/02.png")):
        assert rows[first]["verdict"] == rows[second]["verdict"] == "duplicate"
        assert rows[first]["duplicate_of"] == second and rows[second]["duplicate_of"] == first
    others = [row for name, row in rows.items() if name not in (f"cat/{HOSTILE_COPY}", "cat/01.png",
                                                                 "dog/altered_02.png", "dog/02.png")]
    assert all(row["verdict"] != "duplicate" and row["duplicate_of"] == "" for row in others)
    assert sorted(int(row["outlier_rank"]) for row in rows.values()) == list(range(1, 39))


def test_the_verdict_sections_in_a_real_browser(copies_report, browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    browser.get_log("browser")
    browser.get(copies_report.as_uri())
    sections = {element.get_attribute("id") for element in browser.find_elements(By.CSS_SELECTOR, "section.verdict")}
    assert sections == {f"verdict-{name}" for name in ("mislabelled", "out_of_distribution", "atypical", "ambiguous",
                                                       "duplicate")}
    pairs = browser.find_elements(By.CSS_SELECTOR, "#verdict-duplicate .card.pair")
    assert len(pairs) == 4                                              # both members of both pairs
    for card in pairs:
        images = card.find_elements(By.CSS_SELECTOR, ".pair-images img")
        assert len(images) == 2 and all(browser.execute_script("return arguments[0].naturalWidth", image) > 0
                                        for image in images)                # side by side, both rendered
        assert "copy_rms_difference" in card.find_element(By.CSS_SELECTOR, ".evidence").text
    ids = {card.find_element(By.CSS_SELECTOR, ".sample-id").text for card in pairs}
    assert f"cat/{HOSTILE_COPY} = cat/01.png" in ids and "dog/02.png = dog/altered_02.png" in ids
    assert not browser.find_elements(By.CSS_SELECTOR, 'img[src="y"]')
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
