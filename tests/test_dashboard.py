"""GET /dashboard as HTTP, without a browser: the seed's four figures in the HTML, a
strict Content-Security-Policy, no inline script or style, and the page's own static
files served with the right types. tests/test_dashboard_browser.py runs the page."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources

import aiohttp

from mqpy.observability import ReceiverState
from tests.conftest import ServerFactory
from tests.support.client import SeedClient
from tests.support.dashboard import dashboard_figures
from tests.support.problems import check_problem
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

ADMIN_ENV = {"MQPY_ADMIN_KEY": "test-admin-key-dashboard-51f0"}


class PageOutline(HTMLParser):
    """The tags of a page that load or run code or style, and the ids it defines."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.script_text: list[str] = []
        self.links: list[str] = []  # stylesheets and icons
        self.style_tags = 0
        self.inline_attributes: list[tuple[str, str]] = []
        self.ids: dict[str, dict[str, str | None]] = {}
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        element_id = attributes.get("id")
        if element_id:
            self.ids[element_id] = attributes
        for name, _ in attrs:
            if name.startswith("on") or name == "style":
                self.inline_attributes.append((tag, name))
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True
        elif tag == "style":
            self.style_tags += 1
        elif tag == "link":
            self.links.append(attributes.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


async def get_page(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientResponse, str]:
    async with http.get(url + "/dashboard") as response:
        return response, await response.text()


def outline(html: str) -> PageOutline:
    parser = PageOutline()
    parser.feed(html)
    parser.close()
    return parser


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


async def test_the_page_has_the_four_figures_with_their_ids(
    http: aiohttp.ClientSession, server: ServerProcess, receiver: Receiver
) -> None:
    client = SeedClient(http, server.url)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    await client.send(sender, "one")
    await receiver.wait_for(1)

    response, html = await get_page(http, server.url)
    assert response.status == 200
    assert response.content_type == "text/html"
    page = outline(html)
    for figure_id in ("readers", "writers", "queue-length", "completed-sends"):
        assert figure_id in page.ids, figure_id
    # The seed's markup, one figure a line, as the README's `grep '<dd'` shows it.
    assert '<div><dt>Readers</dt><dd id="readers">1</dd></div>' in html.splitlines()
    assert '<div><dt>Writers</dt><dd id="writers">1</dd></div>' in html.splitlines()
    figures = dashboard_figures(html)
    assert (figures["readers"], figures["writers"]) == (1, 1)
    # The broker counts an acknowledgement a moment after the receiver has it.
    assert figures["completed sends"] in (0, 1)


async def test_the_page_allows_only_its_own_scripts_and_styles(
    http: aiohttp.ClientSession, server: ServerProcess
) -> None:
    response, html = await get_page(http, server.url)
    policy = csp_directives(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    for directive in ("script-src", "style-src"):
        assert policy[directive] == ["'self'"], directive
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"

    page = outline(html)
    assert page.scripts, "the live view's script is missing"
    assert all(script.get("src") for script in page.scripts), page.scripts
    assert page.script_text == [], "inline script"
    assert page.style_tags == 0, "inline <style>"
    assert page.inline_attributes == [], "inline handlers or style attributes"


async def test_the_page_s_static_files_are_served_with_their_types(
    http: aiohttp.ClientSession, start_server: ServerFactory
) -> None:
    # With keys configured: the files hold no data, and the page must load them unasked.
    server = start_server(env=ADMIN_ENV)
    _, html = await get_page(http, server.url)
    page = outline(html)
    expected = {
        "/static/dashboard.js": "text/javascript",
        "/static/dashboard.css": "text/css",
        "/static/favicon.svg": "image/svg+xml",
    }
    linked = [str(script["src"]) for script in page.scripts] + page.links
    assert sorted(linked) == sorted(expected)
    for path, content_type in expected.items():
        async with http.get(server.url + path) as response:
            assert response.status == 200, path
            assert response.content_type == content_type
            assert response.charset == "utf-8"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            body = await response.read()
            etag = response.headers["ETag"]
        assert body.strip(), path
        async with http.get(server.url + path, headers={"If-None-Match": etag}) as response:
            assert response.status == 304
            assert await response.read() == b""
    # Only the page's own files are public.
    async with http.get(server.url + "/static/other.js") as response:
        check_problem(response.status, response.content_type, await response.read(), 401)


async def test_an_unknown_static_file_is_not_found(
    http: aiohttp.ClientSession, server: ServerProcess
) -> None:
    for path in ("/static/other.js", "/static/dashboard.html", "/static/"):
        async with http.get(server.url + path) as response:
            check_problem(response.status, response.content_type, await response.read(), 404)


async def test_with_keys_the_page_asks_for_one_and_without_none(
    http: aiohttp.ClientSession, start_server: ServerFactory, server: ServerProcess
) -> None:
    _, html = await get_page(http, server.url)
    page = outline(html)
    assert page.ids["key-panel"].keys() >= {"hidden"}
    assert 'data-keys-required="false"' in html

    secured = start_server(env=ADMIN_ENV)
    response, html = await get_page(http, secured.url)
    assert response.status == 200
    page = outline(html)
    assert "hidden" not in page.ids["key-panel"]
    assert 'data-keys-required="true"' in html
    assert "Admin key needed" in html
    # The key field has no name: a browser without the script cannot put it in a URL.
    assert "name" not in page.ids["key-input"]
    assert page.ids["key-input"]["type"] == "password"
    assert dashboard_figures(html) == {
        "readers": 0,
        "writers": 0,
        "queue length": 0,
        "completed sends": 0,
    }


def test_the_script_writes_text_never_markup() -> None:
    """The feed carries message bodies and receiver URLs chosen by clients: the script
    must never hand them to an HTML parser."""
    script = resources.files("mqpy").joinpath("static", "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script


async def test_the_receivers_table_has_a_column_for_the_group(
    http: aiohttp.ClientSession, server: ServerProcess
) -> None:
    _, html = await get_page(http, server.url)
    table = re.search(r'<table id="receivers".*?</thead>', html, re.DOTALL)
    assert table is not None
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table.group(0))
    assert headers[:4] == ["Receiver", "Topic", "Group", "State"], headers


def test_each_receiver_state_has_its_own_style() -> None:
    """A paused receiver must not look failing, nor a failing one healthy."""
    static = resources.files("mqpy").joinpath("static")
    style = static.joinpath("dashboard.css").read_text()
    script = static.joinpath("dashboard.js").read_text()
    rules = {}
    for state in ReceiverState:
        rule = re.search(rf"^\.state-{state.value} \{{([^}}]*)\}}", style, re.MULTILINE)
        assert rule is not None, f"no style for {state.value}"
        rules[state] = rule.group(1).strip()
        assert f'["{state.value}", ' in script, f"the script does not know {state.value}"
    assert len(set(rules.values())) == len(rules), rules


async def test_the_nodes_table_has_a_column_for_each_heartbeat_figure(
    http: aiohttp.ClientSession, server: ServerProcess
) -> None:
    _, html = await get_page(http, server.url)
    table = re.search(r'<table id="nodes".*?</thead>', html, re.DOTALL)
    assert table is not None
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table.group(0))
    assert headers == ["Node", "Address", "Uptime", "Held", "In flight", "Last seen"], headers
    assert 'id="nodes-empty"' in html
