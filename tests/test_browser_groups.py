"""The page's group photo (every face labelled on the photo) and "group these photos", in a
real headless Chromium against a real gateway on the real pack (the fixtures of
test_browser.py). Screenshots go to tests/artifacts/."""
import base64

import httpx

from bench.groups import tiled
from test_browser import (ARTIFACTS, TRAIN, browser, gateway, green_pixels,  # noqa: F401
                          page, pytestmark)

FACES = {"Barack Obama": (TRAIN / "obama" / "obama.jpg", TRAIN / "obama" / "obama2.jpg"),
         "Joe Biden": (TRAIN / "biden" / "biden.jpg", TRAIN / "biden" / "biden2.jpg"),
         "Rose Leslie": (TRAIN / "rose_leslie" / "img1.jpg", TRAIN / "rose_leslie" / "img2.jpg")}


def test_a_group_photo_is_labelled_face_by_face(page, gateway, tmp_path):
    with httpx.Client(base_url=gateway, timeout=120) as client:
        for name in ("Barack Obama", "Joe Biden"):  # Rose Leslie is never enrolled
            enrolment = FACES[name][0]
            assert client.post("/v1/face/register", data={"name": name}, files={
                "img": (enrolment.name, enrolment.read_bytes(), "image/jpeg")}).status_code == 200
    image, _ = tiled([second for _, second in FACES.values()])
    group = tmp_path / "group.jpg"
    group.write_bytes(base64.b64decode(image))
    page.goto(gateway + "/")
    page.wait_for_selector("#model option[value='test-pack']", state="attached")
    page.set_input_files("#identify input[type=file]", group)
    page.check("#identify input[name=all_faces]")
    page.click("#identify button[type=submit]")
    page.wait_for_selector("#identify .matches tbody tr:nth-child(3)")
    names = page.locator("#identify .matches tbody .name").all_inner_texts()
    assert sorted(names) == ["Barack Obama", "Joe Biden", "unknown"]
    assert green_pixels(page, "#identify canvas") > 200  # the two named faces' boxes
    page.locator("#identify").screenshot(path=ARTIFACTS / "page-group-photo.png")


def test_group_these_photos_shows_one_row_per_person(page, gateway):
    page.goto(gateway + "/")
    page.wait_for_selector("#model option[value='test-pack']", state="attached")
    photos = [path for pair in FACES.values() for path in pair][:4]  # Obama x2, Biden x2
    page.set_input_files("#group input[type=file]", photos)
    page.click("#group button[type=submit]")
    page.wait_for_selector("#group .cluster")
    heads = page.locator("#group .cluster h3").all_inner_texts()
    assert heads == ["Person 1: 2 faces", "Person 2: 2 faces"]
    assert page.locator("#group .cluster canvas.thumb").count() == 4
    page.locator("#group").screenshot(path=ARTIFACTS / "page-group-these-photos.png")
