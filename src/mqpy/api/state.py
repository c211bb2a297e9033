"""Typed access to what the app factory stores on the application."""

from __future__ import annotations

from aiohttp import web

from mqpy.broker import Broker

BROKER = web.AppKey("broker", Broker)


def broker_of(request: web.Request) -> Broker:
    return request.app[BROKER]
