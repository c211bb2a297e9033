"""Reading the seed's four figures off GET /dashboard, as a browser without JavaScript
would show them."""

from __future__ import annotations

import re

import aiohttp

FIGURES = ("readers", "writers", "queue length", "completed sends")


def dashboard_figures(html: str) -> dict[str, int]:
    """Each figure is the first number after its label in the page's visible text."""
    text = re.sub(r"<[^>]+>", " ", html)
    figures = {}
    for label in FIGURES:
        match = re.search(label.replace(" ", r"\s+") + r"\s*:?\s+(\d+)", text, re.IGNORECASE)
        assert match, f"{label!r} is not on the dashboard:\n{html}"
        figures[label] = int(match.group(1))
    return figures


async def read_dashboard(http: aiohttp.ClientSession, base_url: str) -> dict[str, int]:
    async with http.get(base_url + "/dashboard") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        return dashboard_figures(await response.text())
