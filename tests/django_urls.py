"""URLconf of the Django test app (tests/test_frameworks.py)."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse
from django.urls import include, path, re_path

from pynba import pynba


def product(request: HttpRequest, pid: int) -> HttpResponse:
    with pynba.timer(group="db::select", pid=str(pid)):
        return HttpResponse(f"product {pid}")


def item(request: HttpRequest, slug: str) -> HttpResponse:
    return HttpResponse(slug)


def numbered(request: HttpRequest, n: str) -> HttpResponse:
    return HttpResponse(n)


async def async_view(request: HttpRequest, n: int) -> HttpResponse:
    with pynba.timer(group="async"):
        await asyncio.sleep(0)
    return HttpResponse(str(n))


shop = [path("item/<slug:slug>", item)]

urlpatterns = [
    path("product/<int:pid>", product),
    path("shop/", include(shop)),
    re_path(r"^re/(?P<n>[0-9]+)$", numbered),
    path("async/<int:n>", async_view),
]
