"""The web console in a real browser (headless Chromium), against the local stack, from its own origin.

Each state the console reaches is photographed into build/console/ (docs/images/console.png is one of them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from playwright.sync_api import expect
from support.secrets_under_test import API_KEY
from support.stack_fixtures import settle_worker


@pytest.fixture
def api_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, str | None]]]:
    """(method, path, Origin) of every request that reached the API function: the browser's preflights included."""
    seen: list[tuple[str, str, str | None]] = []
    real = ApiGatewayResolver.resolve

    def resolve(self, event, context):  # type: ignore[no-untyped-def]
        headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
        seen.append((event.get("httpMethod", ""), event.get("path", ""), headers.get("origin")))
        return real(self, event, context)

    monkeypatch.setattr(ApiGatewayResolver, "resolve", resolve)
    yield seen


def type_key(page, key: str = API_KEY) -> None:
    page.fill("#api-key", key)


def fill_generate(page, **fields: str) -> None:
    for name, value in fields.items():
        page.fill(f"#{name}", value)


def test_console_is_served_from_its_own_origin_and_the_api_port_leads_there(stack, page):
    # Given the stack's console and API
    console, api = urlsplit(stack.console.url), urlsplit(stack.url)
    # Then they are two origins (the browser must preflight), and /console/ on the API port redirects to the page
    assert (console.hostname, console.port) != (api.hostname, api.port)
    page.goto(f"{stack.url}/console/")
    assert page.url == stack.console.url
    assert page.locator('meta[name="api-base"]').get_attribute("content") == stack.url


def test_generate_renders_the_image_at_its_natural_size(page, emulator, api_calls, screenshot):
    # Given the key typed in, and a prompt of 512×384 pixels
    type_key(page)
    fill_generate(page, prompt="a lighthouse at dawn, oil painting", width="512", height="384", num_steps="2")
    # When Generate is pressed
    page.click("#generate-button")
    # Then the image is shown, loaded from its presigned URL, at the size asked for
    image = page.locator("#result-image")
    expect(page.locator("#result")).to_be_visible()
    page.wait_for_function("() => document.getElementById('result-image').naturalWidth > 0")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [512, 384]
    assert image.get_attribute("data-id").startswith("img_")
    expect(page.locator("#result-caption")).to_contain_text("512×384, 2 steps")
    expect(page.locator("#error")).to_be_hidden()
    # And the browser preflighted the cross-origin call from the console's origin, then made it
    origin = page.evaluate("() => window.location.origin")
    assert ("OPTIONS", "/v1/images", origin) in api_calls
    assert ("POST", "/v1/images", origin) in api_calls
    # And the key lives in this tab's session storage, nowhere else
    assert page.evaluate("() => sessionStorage.getItem('flux-console-api-key')") == API_KEY
    assert page.evaluate("() => localStorage.length") == 0
    assert page.evaluate("() => document.cookie") == ""
    screenshot("generate")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("width", "500", "multiple of 16"),
        ("num_steps", "9", "less than or equal to 8"),
        ("seed", "ten", "valid integer"),
    ],
)
def test_a_bad_field_shows_the_api_message_next_to_it(page, emulator, screenshot, field, value, message):
    # Given a request with one bad field
    type_key(page)
    fill_generate(page, prompt="a red fox", **{field: value})
    # When it is submitted
    page.click("#generate-button")
    # Then the API's reason shows next to that field, the field is marked, and the others are left alone
    error = page.locator(f'#generate-form .field-error[data-for="{field}"]')
    expect(error).to_be_visible()
    expect(error).to_contain_text(message)
    assert page.locator(f"#{field}").get_attribute("aria-invalid") == "true"
    assert page.locator("#generate-form .field-error:visible").count() == 1
    expect(page.locator("#error")).to_contain_text("422 validation_error")
    # and nothing was generated
    assert emulator.calls == 0
    expect(page.locator("#result")).to_be_hidden()
    if field == "width":
        screenshot("bad-field")


def test_a_twelve_item_job_fills_the_gallery_and_the_bar_reaches_100(stack, page, emulator, screenshot):
    # Given twelve prompts pasted into the job form, at 256×256
    type_key(page)
    fill_generate(page, width="256", height="256", num_steps="2")
    prompts = [f"a watercolor of a small island, variation {index}" for index in range(12)]
    page.fill("#prompts", "\n".join(prompts))
    # When the job is submitted
    page.click("#job-button")
    # Then its progress is shown live, and the bar reaches 100 % once the twelve images are in the gallery
    expect(page.locator("#progress")).to_be_visible()
    expect(page.locator("#job-id")).to_have_text(re.compile(r"^job_"))
    expect(page.locator("#progress .bar")).to_have_attribute("data-percent", "100", timeout=60_000)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#job-counts")).to_contain_text("12 of 12 settled: 12 succeeded")
    tiles = page.locator("#gallery .tile img")
    expect(tiles).to_have_count(12)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#gallery img')].every(img => img.complete && img.naturalWidth === 256)"
    )
    # And each tile says what it was made from, with a download link to the image
    captions = page.locator("#gallery figcaption").all_inner_texts()
    for prompt in prompts:
        assert any(prompt in caption and "256×256, 2 steps" in caption for caption in captions), prompt
    downloads = page.locator("#gallery a[download]")
    expect(downloads).to_have_count(12)
    assert all(href.startswith("http") for href in downloads.evaluate_all("links => links.map(a => a.href)"))
    expect(page.locator("#cancel-button")).to_be_hidden()
    assert emulator.calls == 12
    screenshot("job")


def test_cancel_stops_a_running_job(stack, page, emulator, screenshot):
    # Given a slow upstream and a job bigger than the worker starts at once
    emulator.set_latency(1.5)
    try:
        type_key(page)
        fill_generate(page, width="256", height="256", num_steps="1")
        page.fill("#prompts", "\n".join(f"a slow picture {index}" for index in range(20)))
        page.click("#job-button")
        expect(page.locator("#cancel-button")).to_be_visible()
        # When Cancel is pressed
        page.click("#cancel-button")
        # Then the job shows canceled at once, and its items not started end canceled
        expect(page.locator("#job-status")).to_have_text("canceled")
        expect(page.locator("#progress .bar")).to_have_attribute("data-percent", "100", timeout=60_000)
        counts = page.locator("#job-counts").inner_text()
        canceled = int(re.search(r"(\d+) canceled", counts).group(1))
        assert canceled > 0, counts
        assert emulator.calls < 20
        expect(page.locator("#cancel-button")).to_be_hidden()
        screenshot("canceled")
    finally:
        emulator.set_latency(0.0)
        settle_worker(stack)


def test_a_wrong_key_gets_a_clear_message(page, emulator, screenshot):
    # Given a wrong key
    type_key(page, "not-the-key")
    fill_generate(page, prompt="a quiet harbour")
    # When a call is made
    page.click("#generate-button")
    # Then the API Gateway's refusal is shown as it states it, with what to do; nothing reached the upstream
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("403 invalid_api_key: Missing or invalid API key (x-api-key header)")
    expect(error).to_contain_text("check the API key")
    assert "not-the-key" not in error.inner_text()
    assert emulator.calls == 0
    screenshot("wrong-key")


def test_no_key_is_refused_by_the_page_itself(page, emulator):
    # Given no key typed in, When Generate is pressed, Then the page asks for one without calling the API
    fill_generate(page, prompt="anything")
    page.click("#generate-button")
    expect(page.locator("#error")).to_contain_text("Type your API key")
    assert emulator.calls == 0


def test_a_csv_file_with_a_bad_row_names_the_row_and_field(page, emulator, tmp_path):
    # Given a CSV whose second row asks for a width that is not a multiple of 16
    csv = tmp_path / "prompts.csv"
    csv.write_text('prompt,width,height\n"a boat, at sea",256,256\na kite,300,256\n', encoding="utf-8")
    type_key(page)
    page.set_input_files("#job-file", str(csv))
    # When it is submitted
    page.click("#job-button")
    # Then the API's refusal names that row and field next to the file input, and nothing was queued
    error = page.locator('#job-form .field-error[data-for="file"]')
    expect(error).to_contain_text("item 2 (width): Input should be a multiple of 16")
    expect(page.locator("#error")).to_contain_text("422 validation_error")
    expect(page.locator("#progress")).to_be_hidden()
    assert emulator.calls == 0


def test_a_jsonl_file_becomes_a_job(page, emulator, tmp_path):
    # Given a JSONL file of two request bodies
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(
        '{"prompt": "a paper crane", "width": 256, "height": 256, "seed": 7}\n\n'
        '{"prompt": "a glass marble", "width": 320, "height": 256, "num_steps": 1}\n',
        encoding="utf-8",
    )
    type_key(page)
    page.set_input_files("#job-file", str(jsonl))
    # When it is submitted
    page.click("#job-button")
    # Then both images come back with their own parameters
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#gallery .tile img")).to_have_count(2)
    captions = page.locator("#gallery figcaption").all_inner_texts()
    assert any("a paper crane — 256×256, 4 steps, seed 7" in caption for caption in captions), captions
    assert any("a glass marble — 320×256, 1 steps" in caption for caption in captions), captions


@pytest.fixture
def same_origin_api(stack) -> Iterator[str]:
    """The API as deployed with EnableConsole: a second local gateway over the same function, without the
    redirect to the console's own origin, so the function serves the page itself (behind /prod, like AWS)."""
    from devstack.gateway import LocalApiGateway, load_routes
    from devstack.stack import TEMPLATE, one_at_a_time

    handler = one_at_a_time(stack.handlers["api_handler"].lambda_handler)
    routes = [route for route in load_routes(TEMPLATE) if route.function_id == "ApiFunction"]
    gateway = LocalApiGateway(routes, {"ApiFunction": handler}, api_keys=[API_KEY], port=0).start()
    yield gateway.url
    gateway.stop()


def test_served_by_the_api_itself_the_page_works_behind_the_stage(page, same_origin_api, emulator, api_calls):
    # Given the page as the deployed API serves it, at /prod/console/ (same origin as the API)
    page.goto(f"{same_origin_api}/prod/console/")
    assert page.locator('meta[name="api-base"]').get_attribute("content") == "/prod"
    expect(page.locator("h1")).to_have_text("Flux image service")
    # When an image is generated
    type_key(page)
    fill_generate(page, prompt="a compass rose", width="256", height="256")
    page.click("#generate-button")
    # Then the call went to /prod/v1/images on the same origin (no preflight needed) and the image is described
    expect(page.locator("#result-caption")).to_contain_text("a compass rose — 256×256")
    origin = page.evaluate("() => window.location.origin")
    assert origin == same_origin_api
    assert not [call for call in api_calls if call[0] == "OPTIONS"]
    assert page.locator("#docs-link").get_attribute("href") == "/prod/docs"
