"""The page at `/` and the docs at `/docs` in a real headless Chromium (Debian's `chromium`,
driven by playwright), against a real gateway on the real pack. Screenshots go to
tests/artifacts/ (git-ignored) for a person to look at."""
import pathlib
import urllib.parse

import httpx
import pytest

from gateway_support import gateway_process, write_config
from support import FACES, ROOT, backend_process, needs_shared

CHROMIUM = pathlib.Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
EXAMPLES = FACES / "face_recognition" / "examples"
TRAIN = EXAMPLES / "knn_examples" / "train"
MODEL = "test-pack"
GREEN = (0x30, 0xA4, 0x6C)  # the page's colour for a face box that matched

pytestmark = [needs_shared, pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            # a real getUserMedia stream from Chromium's built-in test camera
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_config(models, MODEL)
    with gateway_process(models, tmp_path_factory.mktemp("data"),
                         "--default-model", MODEL) as (_, url):
        yield url


@pytest.fixture
def page(browser, gateway):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    # Nothing but the gateway on 127.0.0.1 is reachable: the page and docs must not need it.
    blocked = []

    def only_loopback(route):
        if urllib.parse.urlsplit(route.request.url).hostname == "127.0.0.1":
            return route.continue_()
        blocked.append(route.request.url)
        return route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.set_default_timeout(60_000)  # the first face request loads the model
    page.blocked = blocked
    yield page
    context.close()


def green_pixels(page, selector: str) -> int:
    """How many pixels of the photo's canvas are the matched-face box colour."""
    return page.eval_on_selector(selector, """(canvas, rgb) => {
        const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (d[i] === rgb[0] && d[i + 1] === rgb[1] && d[i + 2] === rgb[2]) n++;
        return n;
    }""", list(GREEN))


def test_the_page_verifies_registers_identifies_and_forgets(page, gateway):
    page.goto(gateway + "/")
    page.wait_for_selector("#model option[value='test-pack']", state="attached")
    page.set_input_files("#verify [data-field=img1] input[type=file]", TRAIN / "biden" / "biden.jpg")
    page.set_input_files("#verify [data-field=img2] input[type=file]", TRAIN / "biden" / "biden2.jpg")
    page.click("#verify button[type=submit]")
    verdict = page.wait_for_selector("#verify .verdict")
    assert verdict.inner_text() == "Same person"
    facts = page.inner_text("#verify .result dl")
    for word in ("distance", "threshold", "0.74", "confidence"):
        assert word in facts
    assert green_pixels(page, "#verify [data-field=img1] canvas") > 100  # the face box
    page.screenshot(path=ARTIFACTS / "page-verify.png", full_page=True)

    people = {"Barack Obama": TRAIN / "obama" / "obama.jpg",
              "Rose Leslie": TRAIN / "rose_leslie" / "img1.jpg",
              "Kit Harington": TRAIN / "kit_harington" / "john1.jpeg"}
    for n, (name, photo) in enumerate(people.items(), start=1):
        page.set_input_files("#register input[type=file]", photo)
        page.fill("#register input[name=name]", name)
        page.fill("#register textarea[name=labels]", f"cast=yes\nrow={n}")
        page.click("#register button[type=submit]")
        page.wait_for_selector(f"#register .result .ok:text('Registered {name}')")
        page.wait_for_selector(f"#registry .count:text('({n})')")
    assert page.locator("#registry tbody tr").count() == 3

    page.set_input_files("#identify input[type=file]", TRAIN / "rose_leslie" / "img2.jpg")
    page.click("#identify button[type=submit]")
    first = page.wait_for_selector("#identify .matches tbody tr:first-child")
    assert first.query_selector(".name").inner_text() == "Rose Leslie"
    assert "no match" not in first.inner_text()
    page.screenshot(path=ARTIFACTS / "page-identify.png", full_page=True)

    # The search box finds a person by name; cleared, everyone is listed again.
    page.fill("#registry form.search input[name=name]", "Rose Leslie")
    page.click("#registry form.search button[type=submit]")
    page.wait_for_selector("#registry .range:text('1–1 of 1')")
    assert page.locator("#registry tbody .name").all_inner_texts() == ["Rose Leslie"]
    page.fill("#registry form.search input[name=name]", "Nobody Here")
    page.click("#registry form.search button[type=submit]")
    page.wait_for_selector("#registry .range:text('nobody named Nobody Here')")
    page.fill("#registry form.search input[name=name]", "")
    page.click("#registry form.search button[type=submit]")
    page.wait_for_selector("#registry .range:text('1–3 of 3')")

    # Forget asks first: dismissed, nothing is forgotten; accepted, the person goes.
    asked = []
    row = page.locator("#registry tbody tr", has_text="Kit Harington")
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    row.locator("button.forget").click()
    page.wait_for_timeout(300)
    assert asked and "Forget Kit Harington" in asked[0]
    assert page.locator("#registry tbody tr").count() == 3
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.forget").click()
    page.wait_for_selector("#registry .count:text('(2)')")
    names = page.locator("#registry tbody .name").all_inner_texts()
    assert sorted(names) == ["Barack Obama", "Rose Leslie"]

    # An API error is shown as its message: a file that is no image.
    page.set_input_files("#analyze input[type=file]", FACES / "utkface" / "labels.csv")
    page.click("#analyze button[type=submit]")
    assert "img is not an image in an accepted format" in page.wait_for_selector(
        "#analyze .result.error").inner_text()
    page.set_input_files("#analyze input[type=file]", FACES / "silent_face" / "image_T1.jpg")
    page.check("#analyze input[name=anti_spoofing]")
    page.click("#analyze button[type=submit]")
    analysis = page.wait_for_selector("#analyze .result .face").inner_text()
    for word in ("age", "gender", "liveness", "real"):
        assert word in analysis
    page.screenshot(path=ARTIFACTS / "page-analyze-registry.png", full_page=True)
    assert page.blocked == []


def test_the_registry_pages_and_forgetting_the_last_row_goes_back(page, gateway):
    photo = (TRAIN / "obama" / "obama2.jpg").read_bytes()
    with httpx.Client(base_url=gateway, timeout=60) as api:
        start = api.get("/v1/face/registry").json()["total"]
        for n in range(11 - start):
            assert api.post("/v1/face/register", files={"img": photo},
                            data={"name": f"Extra {n:02d}"}).status_code == 200
    page.goto(gateway + "/")
    page.wait_for_selector("#registry .range:text('1–10 of 11')")
    assert page.locator("#registry tbody tr").count() == 10 and page.is_disabled("#registry .prev")
    page.click("#registry .next")
    page.wait_for_selector("#registry .range:text('11–11 of 11')")
    assert page.is_disabled("#registry .next")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#registry tbody button.forget")
    page.wait_for_selector("#registry .range:text('1–10 of 10')")


def test_a_webcam_photo_becomes_the_image(page, gateway):
    page.goto(gateway + "/")
    page.click("#identify .camera")
    page.wait_for_function("document.querySelector('#camera-dialog video').videoWidth > 0")
    page.click("#camera-dialog button[value=capture]")
    page.wait_for_selector("#identify canvas:not([hidden])")
    assert page.eval_on_selector("#identify canvas", "c => c.width") > 0
    assert page.is_hidden("#identify .hint")


def test_docs_render_with_only_loopback_reachable(page, gateway):
    page.goto(gateway + "/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    for route in ("/v1/face/verify", "/v1/face/embed", "/v1/detection", "/v1/face/registry"):
        assert route in paths
    page.screenshot(path=ARTIFACTS / "docs.png")
    assert page.blocked == []  # Swagger UI asked nothing of another host
    page.goto(gateway + "/redoc")
    page.wait_for_function("document.body.innerText.includes('/v1/face/identify')")
    page.screenshot(path=ARTIFACTS / "redoc.png")
    # ReDoc renders offline; only its footer's "by Redocly" logo points elsewhere
    assert all(url.endswith(".svg") for url in page.blocked), page.blocked


def test_a_401_makes_the_page_ask_for_a_key_and_send_it(page, tmp_path):
    """A real 401: the model's backend wants a token this gateway does not have."""
    write_config(tmp_path / "models", MODEL)
    with backend_process(env={"LOCALAI_GRPC_AUTH_TOKEN": "backend-only"}) as (_, address), \
            gateway_process(tmp_path / "models", tmp_path / "data",
                            "--backend", f"{MODEL}={address}") as (_, url):
        page.goto(url + "/")
        page.wait_for_selector("#model option[value='test-pack']", state="attached")
        page.set_input_files("#analyze input[type=file]", TRAIN / "obama" / "obama.jpg")
        page.click("#analyze button[type=submit]")
        dialog = page.wait_for_selector("#key-dialog[open]")
        assert dialog.query_selector(".why").inner_text()  # the API's 401 message
        page.fill("#key-dialog input[name=key]", "my-key")
        with page.expect_request("**/v1/face/analyze") as retried:
            page.click("#key-dialog button[value=save]")
        assert retried.value.headers["x-api-key"] == "my-key"
        page.wait_for_selector("#key-dialog[open]")  # still refused: asked again
        page.screenshot(path=ARTIFACTS / "page-api-key.png")
        page.click("#key-dialog button[value=cancel]")
        assert page.wait_for_selector("#analyze .result.error").inner_text()
        assert page.evaluate("localStorage.getItem('face-api-key')") == "my-key"


def test_the_people_view_adds_photos_merges_and_forgets_with_a_confirmation(page, gateway):
    with httpx.Client(base_url=gateway, timeout=60) as api:
        for person in api.get("/v1/face/people").json()["items"]:  # what earlier tests left
            api.delete(f"/v1/face/people/{person['person_id']}")
        obama = api.post("/v1/face/register", data={"name": "Obama"}, files=[
            ("imgs", (f.name, f.read_bytes(), "image/jpeg"))
            for f in (TRAIN / "obama" / "obama.jpg", TRAIN / "obama" / "obama2.jpg")]).json()
        again = api.post("/v1/face/register", data={"name": "Obama (again)"}, files={
            "img": (EXAMPLES / "obama-480p.jpg").read_bytes()}).json()
        api.post("/v1/face/register", data={"name": "Rose Leslie"},
                 files={"img": (TRAIN / "rose_leslie" / "img1.jpg").read_bytes()})
    page.goto(gateway + "/")
    page.wait_for_selector("#people .count:text('(3)')")
    rows = page.locator("#people tbody tr")
    assert rows.locator(".name").all_inner_texts() == ["Obama", "Obama (again)", "Rose Leslie"]
    assert rows.locator(".faces").all_inner_texts() == ["2", "1", "1"]
    assert "3 of 3 people" in page.inner_text("#people .range")
    assert page.inner_text("#registry .count") == "(4)"  # photos, not people

    page.fill("#people input[name=name]", "Oba")  # a name prefix search
    page.wait_for_selector("#people .count:text('(2)')")
    assert page.is_disabled("#people button.merge")
    page.check(f"#people input.pick[value='{obama['person_id']}']")
    page.check(f"#people input.pick[value='{again['person_id']}']")
    page.click("#people button.merge")  # the first ticked is kept
    page.wait_for_selector("#people .count:text('(1)')")
    assert rows.locator(".faces").all_inner_texts() == ["3"]
    page.screenshot(path=ARTIFACTS / "page-people-merged.png", full_page=True)

    with page.expect_file_chooser() as chooser:
        rows.first.locator("button.add").click()
    chooser.value.set_files([EXAMPLES / "obama_small.jpg"])
    page.wait_for_selector("#people .faces:text('4')")
    page.wait_for_selector("#registry .count:text('(5)')")

    forget = rows.first.locator("button.forget")
    forget.click()  # asks first
    assert forget.inner_text() == "Forget Obama and 4 photos?"
    page.screenshot(path=ARTIFACTS / "page-people-confirm.png", full_page=True)
    rows.first.locator("button.cancel").click()
    assert forget.inner_text() == "Forget" and rows.count() == 1
    forget.click()
    forget.click()
    page.wait_for_selector("#people .range:text('nobody named Oba')")  # the prefix is still set
    page.fill("#people input[name=name]", "")
    page.wait_for_selector("#people .count:text('(1)')")
    assert rows.locator(".name").all_inner_texts() == ["Rose Leslie"]
    assert page.inner_text("#registry .count") == "(1)"
    page.screenshot(path=ARTIFACTS / "page-people.png", full_page=True)
    assert page.blocked == []


def test_face_boxes_show_their_quality_and_a_refused_registration_its_reasons(page, gateway):
    page.goto(gateway + "/")
    page.wait_for_selector("#model option[value='test-pack']", state="attached")
    page.set_input_files("#analyze input[type=file]", TRAIN / "obama" / "obama.jpg")
    page.click("#analyze button[type=submit]")
    analysis = page.wait_for_selector("#analyze .result .face").inner_text()
    assert "quality" in analysis
    label = page.get_attribute("#analyze [data-field=img] canvas", "aria-label")
    assert label.startswith("1 · q ") and int(label.split("q ")[1].split()[0]) > 10, label
    page.screenshot(path=ARTIFACTS / "page-quality.png", full_page=True)

    # A face far too small for the gate: nothing is registered, and the page says why.
    page.set_input_files("#register input[type=file]", files=[{
        "name": "tiny.png", "mimeType": "image/png", "buffer": tiny_face_png(gateway)}])
    page.fill("#register input[name=name]", "Too Small")
    page.click("#register button[type=submit]")
    error = page.wait_for_selector("#register .result.error").inner_text()
    assert "below the quality gate medium: SMALL_FACE: inter-eye distance" in error, error
    assert "needs at least 28" in error
    page.screenshot(path=ARTIFACTS / "page-quality-refused.png", full_page=True)
    registry = httpx.get(gateway + "/v1/face/registry", params={"name": "Too Small"}).json()
    assert registry["total"] == 0


def tiny_face_png(gateway: str) -> bytes:
    """obama.jpg shrunk until the eyes are 15 px apart."""
    import base64
    import cv2
    photo = TRAIN / "obama" / "obama.jpg"
    found = httpx.post(gateway + "/v1/detection", timeout=60, json={
        "image": base64.b64encode(photo.read_bytes()).decode()}).json()["detections"][0]
    scale = 15 / found["quality"]["components"]["inter_eye_px"]
    img = cv2.imread(str(photo))
    small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".png", small)[1].tobytes()
