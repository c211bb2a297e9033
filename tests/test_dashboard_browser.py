"""The live dashboard in a real headless Chromium: Debian's `chromium`, driven by
Playwright (never a browser Playwright downloads).

A real broker and real receivers; the page is loaded once and must follow the broker
by itself, and acts on it: pause, resume and delete a receiver, look up a message's
journey, redrive, drop and purge dead letters. Every wait is for something the page
shows; no sleep decides an outcome. The busy page, with a message's journey looked up
and a topic that no receiver takes, is saved as artifacts/dashboard.png.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Error,
    Locator,
    Page,
    async_playwright,
    expect,
)

from mqpy.delivery.window import INITIAL_WINDOW
from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient

# Slow (`make check` skips it; `make test` runs it): drives Chromium.
pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ADMIN_KEY = "test-admin-key-dashboard-browser-7a2c"
WAIT_MS = 20_000  # for what the page shows; the page polls every second


@dataclass
class Tab:
    """A page, and what went wrong in it: script errors and console errors (a blocked
    resource or a Content-Security-Policy violation is reported as the latter)."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if "Content Security Policy" in e or "page error" in e]


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium; skipped without it, except under CI, where it must be there."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium to run the browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: .ci/run installs it)")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_tab(browser: Browser, *, javascript: bool = True) -> Tab:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, java_script_enabled=javascript
    )
    tab = Tab(await context.new_page())

    def page_error(error: Error) -> None:
        tab.errors.append(f"page error: {error}")

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            tab.errors.append(f"{message.text} ({message.location.get('url')})")

    tab.page.on("pageerror", page_error)
    tab.page.on("console", console)
    return tab


class Flaky:
    """A receiver's behaviour: HTTP 500 while broken, 204 otherwise."""

    def __init__(self) -> None:
        self.broken = True

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=500 if self.broken else 204)


def chart_heights(path_d: str | None) -> list[float]:
    """The y coordinate of each point of an SVG path (the chart's lines: one a second)."""
    assert path_d, "the chart has no line"
    return [float(y) for y in re.findall(r"[ML][\d.]+,([\d.]+)", path_d)]


async def busy_seconds(line: Locator) -> int:
    """How many seconds of the chart's line are above its zero (SVG y grows downwards)."""
    heights = chart_heights(await line.get_attribute("d"))
    return sum(1 for y in heights if y < max(heights))


async def wait_for_chart(line: Locator, seconds: int) -> None:
    """Wait until the line shows traffic in `seconds` seconds. (Not with
    wait_for_function: the page's Content-Security-Policy forbids evaluating strings.)"""
    deadline = asyncio.get_running_loop().time() + WAIT_MS / 1000
    while (busy := await busy_seconds(line)) < seconds:
        assert asyncio.get_running_loop().time() < deadline, f"{busy} busy seconds"
        await asyncio.sleep(0.1)


async def publish_until_stopped(client: SeedClient, sender: int, stop: asyncio.Event) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        await client.send(sender, f"load {number}")
        await asyncio.sleep(0.05)  # pacing the load, not waiting for an outcome


STRUCTURED = "cloudevents-structured"


async def subscribe(
    http: aiohttp.ClientSession, base_url: str, url: str, *, topic: str, group: str, **extra: str
) -> int:
    body = {"url": url, "topic": topic, "group": group, **extra}
    async with http.post(base_url + "/v1/subscriptions", json=body) as response:
        assert response.status == 201, await response.text()
        return int((await response.json())["id"])


async def set_paused(
    http: aiohttp.ClientSession, base_url: str, subscription_id: int, *, paused: bool
) -> None:
    action = "pause" if paused else "resume"
    async with http.post(f"{base_url}/v1/subscriptions/{subscription_id}/{action}") as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["paused"] is paused


async def badge_colours(row: Locator) -> tuple[str, str]:
    """The state badge's text and background colours as the browser computed them."""
    badge = row.locator(".badge")
    colour = await badge.evaluate("(element) => getComputedStyle(element).color")
    background = await badge.evaluate("(element) => getComputedStyle(element).backgroundColor")
    return str(colour), str(background)


async def test_the_dashboard_follows_the_broker_without_a_reload(
    browser: Browser,
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
) -> None:
    # One attempt per delivery: a failure goes straight to the dead letters.
    server = start_server("--retry-base", "0.05", "--retry-max", "0.5", "--max-attempts", "1")
    client = SeedClient(http, server.url)
    flaky = Flaky()
    healthy, failing = await start_receiver(), await start_receiver(flaky)

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(server.url + "/dashboard")
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    for figure in ("#readers", "#writers", "#queue-length", "#completed-sends"):
        await expect(page.locator(figure)).to_have_text("0")
    await expect(page.locator("#key-panel")).to_be_hidden()
    await expect(page.locator("#no-script")).to_be_hidden()
    published_line = page.locator("path.line-published")
    assert await busy_seconds(published_line) == 0

    # One node on SQLite: this one, marked as the one answering.
    this_node = await node_name(http, server.url)
    node_row = page.locator("#nodes tbody tr")
    await expect(node_row).to_have_count(1, timeout=WAIT_MS)
    await expect(node_row).to_have_attribute("data-node", this_node)
    await expect(node_row).to_have_attribute("data-answering", "true")
    await expect(node_row.locator(".node-name")).to_have_text(this_node)
    await expect(node_row.locator(".here")).to_be_visible()
    await expect(node_row.locator("td").nth(1)).to_contain_text(str(server.port))
    await expect(node_row.locator("td").nth(5)).to_have_text(re.compile("ago|just now"))
    await expect(page.locator("#nodes-empty")).to_be_hidden()

    healthy_id = await client.connect_receiver(healthy.url)
    failing_id = await client.connect_receiver(failing.url)
    sender = await client.connect_sender()
    await expect(page.locator("#readers")).to_have_text("2", timeout=WAIT_MS)
    await expect(page.locator("#writers")).to_have_text("1", timeout=WAIT_MS)

    # A body written to run script if it were ever parsed as HTML.
    hostile = '<img src=x onerror="document.body.dataset.pwned=1"><b>bold</b>'
    await client.send(sender, hostile)
    await healthy.wait_for(1)
    await expect(page.locator("#completed-sends")).to_have_text("1", timeout=WAIT_MS)
    await expect(page.locator("#tp-published")).to_have_text("1", timeout=WAIT_MS)
    assert await busy_seconds(published_line) == 1, "the published line shows the message"
    # Binned: 5 s a point over the default 5 min, not 300 one-second spikes.
    assert len(chart_heights(await published_line.get_attribute("d"))) == 300 // 5
    await expect(page.locator("#tp-summary")).to_contain_text("averaged over 5 s")

    failing_row = page.locator(f'#receivers tr[data-receiver-id="{failing_id}"]')
    healthy_row = page.locator(f'#receivers tr[data-receiver-id="{healthy_id}"]')
    await expect(failing_row.locator(".badge")).to_have_text("failing", timeout=WAIT_MS)
    await expect(failing_row.locator(".badge")).to_have_class(re.compile("state-failing"))
    await expect(failing_row.locator("summary")).to_contain_text("receiver answered HTTP 500")
    await expect(failing_row).to_contain_text(failing.url)
    await expect(healthy_row.locator(".badge")).to_have_text("healthy")
    await expect(healthy_row.locator("td").nth(6)).to_contain_text(re.compile("ago|just now"))
    # Its window: where every receiver starts, since one message never filled it.
    await expect(healthy_row.locator("td").nth(5)).to_have_text(str(INITIAL_WINDOW))
    await expect(healthy_row.locator(".kind")).to_have_text("seed")
    await expect(healthy_row.locator("td").nth(2)).to_have_text("—")

    group = page.locator(f'.dl-group[data-receiver-id="{failing_id}"]')
    await expect(group.locator("td.body")).to_have_text(hostile, timeout=WAIT_MS)
    await expect(page.locator("#dead-letter-count")).to_have_text("1", timeout=WAIT_MS)
    assert await page.locator("#dead-letter-groups img, #dead-letter-groups b").count() == 0
    assert await page.evaluate("document.body.dataset.pwned") is None

    # The dead letter's message id looks up its journey: dead at the failing receiver
    # after one HTTP 500, delivered to the healthy one.
    await group.locator("button.message-link").click()
    journeys = page.locator("#lookup-deliveries section.journey")
    await expect(journeys).to_have_count(2, timeout=WAIT_MS)
    dead_journey = journeys.filter(has_text=f"Receiver #{failing_id}")
    await expect(dead_journey.locator(".badge")).to_have_text("dead")
    await expect(dead_journey.locator("tbody tr")).to_have_count(1)
    await expect(dead_journey.locator("tbody td").nth(3)).to_have_text("dead")
    await expect(dead_journey.locator("tbody td").nth(4)).to_have_text("500")
    await expect(dead_journey.locator("tbody td").nth(5)).to_have_text("receiver answered HTTP 500")
    done_journey = journeys.filter(has_text=f"Receiver #{healthy_id}")
    await expect(done_journey.locator("tbody td").nth(3)).to_have_text("delivered")
    await expect(page.locator("#lookup-fields")).to_contain_text(hostile)
    assert await page.locator("#lookup-result img, #lookup-result b").count() == 0
    lookup = page.get_by_label("Message id")
    await lookup.fill("msg_not_kept")
    await page.get_by_role("button", name="Look up").click()
    await expect(page.locator("#lookup-error")).to_contain_text(
        "no message with id 'msg_not_kept' is kept"
    )
    await lookup.fill(str(group_message_id := await dead_message_id(client, failing_id)))
    await page.get_by_role("button", name="Look up").click()
    await expect(journeys).to_have_count(2, timeout=WAIT_MS)
    await expect(page.locator("#lookup-fields")).to_contain_text(group_message_id)

    # A message to a topic nobody takes is done (kept for retention), not a backlog:
    # the topic shows its publishing, with no backlog and no "no receiver" alarm.
    async with http.post(
        server.url + "/v1/topics/orphans/messages", json={"body": "nobody takes this"}
    ) as response:
        assert response.status == 201
    orphan = page.locator('#topics tr[data-key="orphans"]')
    await expect(orphan).to_have_attribute("data-orphan", "false", timeout=WAIT_MS)
    await expect(orphan.locator("td").nth(2)).to_have_text("0")
    await expect(orphan.locator(".orphan-badge")).to_have_count(0)
    await expect(page.locator('#topics tr[data-key="default"]')).to_have_attribute(
        "data-orphan", "false"
    )
    await expect(page.locator("#topics thead")).to_contain_text("Published/s")
    await expect(page.locator("#topics thead")).to_contain_text("Delivered/s")

    # A subscription in a consumer group, paused by an operator: paused, not failing.
    paused_id = await subscribe(
        http, server.url, healthy.url, topic="orders", group="billing", format=STRUCTURED
    )
    paused_row = page.locator(f'#receivers tr[data-receiver-id="{paused_id}"]')
    await expect(paused_row.locator(".badge")).to_have_text("healthy", timeout=WAIT_MS)
    await expect(paused_row.locator(".kind")).to_have_text("push")
    # Its CloudEvents format shows beside its kind; the default (mq) does not.
    await expect(paused_row.locator(".format")).to_have_text(STRUCTURED)
    await expect(healthy_row.locator(".format")).to_be_hidden()
    await expect(paused_row.locator("td").nth(1)).to_have_text("orders")
    await expect(paused_row.locator("td").nth(2)).to_have_text("billing")
    # Paused from the page.
    await paused_row.get_by_role("button", name="Pause").click()
    await expect(page.locator("#receiver-result")).to_have_text(
        f"Receiver #{paused_id} paused: its messages wait until it is resumed."
    )
    await expect(paused_row.locator(".badge")).to_have_text("paused", timeout=WAIT_MS)
    await expect(paused_row.locator(".badge")).to_have_class(re.compile("state-paused"))
    await expect(paused_row).to_have_attribute("data-state", "paused")
    paused_colour = await badge_colours(paused_row)
    assert paused_colour not in {
        await badge_colours(healthy_row),
        await badge_colours(failing_row),
    }, "a paused receiver looks healthy or failing"

    # Replayed from the page: what it took in the last hour is due again.
    await paused_row.get_by_label("Replay from").fill("1h")
    await paused_row.get_by_role("button", name="Replay").click()
    await expect(page.locator("#receiver-result")).to_have_text(
        re.compile(
            rf"Receiver #{paused_id} replays from \S+: \d+ messages? due again, \d+ acknowledged\."
        )
    )

    # Under load: the figures climb, the chart fills, dead letters pile up.
    await page.get_by_role("button", name="1 min").click()
    await expect(page.get_by_role("button", name="1 min")).to_have_attribute("aria-pressed", "true")
    stop = asyncio.Event()
    publishers = [
        asyncio.create_task(publish_until_stopped(client, sender, stop)) for _ in range(3)
    ]
    try:
        # Some seconds of traffic, so the chart shows a stretch of it.
        await wait_for_chart(published_line, seconds=4)  # points of 2 s over 1 min
        assert len(chart_heights(await published_line.get_attribute("d"))) == 60 // 2
        await expect(group.locator(".count")).not_to_have_text("1 dead letter", timeout=WAIT_MS)
        await expect(page.locator("#completed-sends")).not_to_have_text("1")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    finally:
        stop.set()
        await asyncio.gather(*publishers)

    await paused_row.get_by_role("button", name="Resume").click()
    await expect(paused_row.locator(".badge")).to_have_text("healthy", timeout=WAIT_MS)
    await expect(paused_row.locator(".badge")).to_have_class(re.compile("state-healthy"))
    # Deleted from the page: a first click asks, the second deletes.
    delete = paused_row.get_by_role("button", name="Delete")
    await delete.click()
    await expect(paused_row.get_by_role("button", name="Delete? Click again")).to_be_visible()
    await paused_row.get_by_role("button", name="Delete? Click again").click()
    await expect(paused_row).to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator("#receiver-result")).to_contain_text(f"#{paused_id} deleted")

    # The receiver recovers; its dead letters go back once redriven.
    flaky.broken = False
    await expect(failing_row.locator(".badge")).to_have_text("healthy", timeout=WAIT_MS)
    dead = int((await page.locator("#dead-letter-count").text_content()) or "0")
    assert dead > 1
    await group.get_by_role("button", name="Redrive", exact=True).click()
    await expect(page.locator("#redrive-result")).to_have_text(
        re.compile(rf"Sent \d+ dead letters? back to receiver #{failing_id}\.")
    )
    await expect(group).to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator("#dead-letters-empty")).to_have_text("No dead letters.")
    await expect(page.locator("#dead-letter-count")).to_have_text("0", timeout=WAIT_MS)
    # Everything the failing receiver missed reaches it now, one delivery at a time.
    await expect(page.locator("#queue-length")).to_have_text("0", timeout=2 * WAIT_MS)
    assert hostile in [received.text for received in failing.received]

    # "Redrive all" too, for a new dead letter.
    flaky.broken = True
    await client.send(sender, "once more")
    await expect(group.locator(".count")).to_have_text("1 dead letter", timeout=WAIT_MS)
    await expect(failing_row.locator(".badge")).to_have_text("failing")
    flaky.broken = False
    await page.get_by_role("button", name="Redrive all").click()
    await expect(group).to_have_count(0, timeout=WAIT_MS)
    await expect(failing_row.locator(".badge")).to_have_text("healthy", timeout=WAIT_MS)
    await expect(page.get_by_role("button", name="Redrive all")).to_be_disabled()
    assert "once more" in [received.text for received in failing.received]

    # One dead letter dropped alone, another redriven alone, each from its row.
    flaky.broken = True
    await client.send(sender, "dropped alone")
    await client.send(sender, "redriven alone")
    await expect(group.locator(".count")).to_have_text("2 dead letters", timeout=WAIT_MS)
    flaky.broken = False
    doomed = group.locator("tbody tr").filter(has_text="dropped alone")
    dropped = await doomed.get_attribute("data-message-id")
    await doomed.get_by_role("button", name=f"Drop message {dropped}").click()
    await expect(page.locator("#redrive-result")).to_have_text(
        f"Message {dropped}: dropped for good for receiver #{failing_id}."
    )
    await expect(group.locator(".count")).to_have_text("1 dead letter", timeout=WAIT_MS)
    await expect(page.locator("#dead-letter-count")).to_have_text("1", timeout=WAIT_MS)
    await group.get_by_role("button", name=re.compile("^Redrive message msg_")).click()
    await expect(group).to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator("#redrive-result")).to_contain_text("sent back to receiver")
    assert "redriven alone" in [received.text for received in failing.received]
    assert "dropped alone" not in [received.text for received in failing.received]

    # Purged: one receiver's, then all, each after a second click.
    flaky.broken = True
    await client.send(sender, "purged with its receiver's")
    await expect(group.locator(".count")).to_have_text("1 dead letter", timeout=WAIT_MS)
    await group.get_by_role("button", name="Purge", exact=True).click()
    await group.get_by_role("button", name="Purge? Click again").click()
    await expect(group).to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator("#redrive-result")).to_have_text(
        f"Dropped 1 dead letter of receiver #{failing_id}."
    )
    await client.send(sender, "purged with all")
    await expect(group.locator(".count")).to_have_text("1 dead letter", timeout=WAIT_MS)
    await page.get_by_role("button", name="Purge all").click()
    await page.get_by_role("button", name="Purge all? Click again").click()
    await expect(page.locator("#redrive-result")).to_have_text("Dropped 1 dead letter for good.")
    await expect(page.locator("#dead-letter-count")).to_have_text("0", timeout=WAIT_MS)
    await expect(page.get_by_role("button", name="Purge all")).to_be_disabled()
    received = [r.text for r in failing.received]
    assert "purged with its receiver's" not in received and "purged with all" not in received

    # The browser logs the 404 of the lookup that found nothing; nothing else went wrong.
    assert [error for error in tab.errors if "msg_not_kept" not in error] == []


async def dead_message_id(client: SeedClient, receiver_id: int) -> str:
    """The message id of one of a receiver's dead letters, as the API lists them."""
    letters = [d for d in await client.dead_letters() if d["receiver_id"] == receiver_id]
    assert letters, "the receiver has no dead letter"
    return str(letters[0]["message_id"])


async def node_name(http: aiohttp.ClientSession, base_url: str) -> str:
    """The name of the node serving `base_url`, as its status feed gives it."""
    async with http.get(base_url + "/v1/status") as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["node"])


async def test_a_receiver_the_broker_disabled_shows_why_and_resumes_from_the_page(
    browser: Browser,
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
) -> None:
    server = start_server(
        "--retry-base",
        "0.05",
        "--retry-max",
        "0.2",
        "--max-attempts",
        "1000",
        "--disable-after",
        "1s",
    )
    flaky = Flaky()
    receiver = await start_receiver(flaky)
    sid = await subscribe(http, server.url, receiver.url, topic="alarms", group="ops")
    async with http.post(server.url + "/v1/topics/alarms/messages", json={"body": "fire"}) as sent:
        assert sent.status == 201

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(server.url + "/dashboard")
    row = page.locator(f'tr[data-receiver-id="{sid}"]')
    await expect(row.locator(".badge")).to_have_text("disabled", timeout=WAIT_MS)
    await expect(row.locator(".badge")).to_have_class(re.compile("state-disabled"))
    await expect(row.locator(".reason")).to_contain_text("every attempt failed for 1s")
    await expect(row.locator(".reason")).to_contain_text("receiver answered HTTP 500")
    flaky.broken = False
    await row.get_by_role("button", name="Resume").click()
    await expect(row.locator(".badge")).to_have_text("healthy", timeout=WAIT_MS)
    await expect(row.locator(".reason")).to_be_hidden()
    await receiver.wait_for(1)
    assert tab.errors == []


async def test_the_nodes_panel_lists_every_node_sharing_the_store(
    browser: Browser,
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    postgres_url: str,
) -> None:
    first = start_server("--store", postgres_url)
    second = start_server("--store", postgres_url)
    here, there = await node_name(http, first.url), await node_name(http, second.url)

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(first.url + "/dashboard")
    rows = page.locator("#nodes tbody tr")
    await expect(rows).to_have_count(2, timeout=WAIT_MS)
    await expect(rows.locator(".node-name")).to_have_text(sorted([here, there]))
    answering = page.locator('#nodes tr[data-answering="true"]')
    await expect(answering).to_have_count(1)
    await expect(answering).to_have_attribute("data-node", here)
    other = page.locator(f'#nodes tr[data-node="{there}"]')
    await expect(other.locator(".here")).to_be_hidden()
    await expect(other.locator("td").nth(1)).to_contain_text(str(second.port))
    ARTIFACTS.mkdir(exist_ok=True)
    await (
        page.locator("#nodes")
        .locator("xpath=..")
        .screenshot(path=str(ARTIFACTS / "dashboard-nodes.png"))
    )

    # A node that dies drops off once its heartbeats are over ten seconds old.
    second.kill()
    await expect(rows).to_have_count(1, timeout=WAIT_MS)
    await expect(rows).to_have_attribute("data-node", here)
    assert tab.errors == []


async def test_with_keys_the_live_view_asks_for_an_admin_key(
    browser: Browser,
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with http.post(
        server.url + "/v1/keys", json={"role": "publisher"}, headers=admin
    ) as response:
        assert response.status == 201
        publisher_key = (await response.json())["key"]

    tab = await open_tab(browser)
    page = tab.page
    await page.goto(server.url + "/dashboard")
    for figure in ("#readers", "#writers", "#queue-length", "#completed-sends"):
        await expect(page.locator(figure)).to_have_text("0")
    await expect(page.locator("#key-panel")).to_be_visible()
    await expect(page.locator("#key-panel")).to_contain_text("Admin key needed")
    await expect(page.locator("#live-status")).to_have_text(re.compile("admin key", re.I))
    await expect(page.locator("#live")).to_be_hidden()

    key_input = page.get_by_label("Admin key", exact=True)
    submit = page.get_by_role("button", name="Show live view")
    await key_input.fill(publisher_key)
    await submit.click()
    await expect(page.locator("#key-error")).to_have_text(re.compile("not an admin key"))
    await key_input.fill(ADMIN_KEY + "-mistyped")
    await submit.click()
    await expect(page.locator("#key-error")).to_have_text(re.compile("not accepted"))
    await expect(page.locator("#live")).to_be_hidden()

    await key_input.fill(ADMIN_KEY)
    await submit.click()
    await expect(page.locator("#live")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#key-panel")).to_be_hidden()
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    await expect(page.locator("#receivers-empty")).to_be_visible()
    assert ADMIN_KEY not in page.url
    assert await page.evaluate("sessionStorage.getItem('mqpy.adminKey')") == ADMIN_KEY

    receiver = await start_receiver()
    async with http.post(
        server.url + "/connect", json={"ClientURL": receiver.url, "mode": "receive"}, headers=admin
    ) as response:
        assert response.status == 200
    await expect(page.locator("#readers")).to_have_text("1", timeout=WAIT_MS)
    await expect(page.locator("#receivers tbody tr")).to_contain_text(receiver.url)
    # The page's actions carry the key too.
    row = page.locator("#receivers tbody tr")
    await row.get_by_role("button", name="Pause").click()
    await expect(row.locator(".badge")).to_have_text("paused", timeout=WAIT_MS)
    await row.get_by_role("button", name="Resume").click()
    await expect(row.locator(".badge")).to_have_text("healthy", timeout=WAIT_MS)

    # The key lasts for the tab's session, and can be forgotten.
    await page.reload()
    await expect(page.locator("#live")).to_be_visible(timeout=WAIT_MS)
    await page.get_by_role("button", name="Forget key").click()
    await expect(page.locator("#key-panel")).to_be_visible()
    await expect(page.locator("#live")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('mqpy.adminKey')") is None

    assert tab.csp_violations() == []


async def test_without_javascript_the_page_still_shows_the_figures(
    browser: Browser, start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    await SeedClient(http, server.url).connect_sender()
    tab = await open_tab(browser, javascript=False)
    await tab.page.goto(server.url + "/dashboard")
    await expect(tab.page.locator("#writers")).to_have_text("1")
    await expect(tab.page.locator("#readers")).to_have_text("0")
    await expect(tab.page.get_by_text("needs JavaScript")).to_be_visible()
    await expect(tab.page.locator("#live")).to_be_hidden()
    # The stylesheet loaded: the figures are laid out side by side.
    readers, writers = (
        await tab.page.locator("#readers").bounding_box(),
        await tab.page.locator("#writers").bounding_box(),
    )
    assert readers is not None and writers is not None
    assert readers["y"] == writers["y"] and readers["x"] < writers["x"]
