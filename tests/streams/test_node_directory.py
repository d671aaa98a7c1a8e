"""Which announced URLs a pusher may deliver to: the per-region allow-list."""

from __future__ import annotations

import pytest

from streams.node_directory import UrlAllowList

ALLOW = UrlAllowList.of(["10.1.0.0/16", "192.0.2.7", "Edge-EU.internal", "fd00::/8"])


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3:9101",
        "https://192.0.2.7",
        "http://edge-eu.internal:9101/",
        "http://EDGE-EU.INTERNAL.:9101",
        "http://[fd00::5]:9101",
    ],
)
def test_urls_inside_the_list_are_allowed(url: str) -> None:
    assert ALLOW.allows(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.2.0.1:9101",  # another network
        "http://192.0.2.8",
        "http://169.254.169.254/latest/meta-data",  # the SSRF classic
        "http://edge-eu.internal.evil.com",
        "http://evil.com#@edge-eu.internal",
        "http://user:pw@10.1.2.3:9101",  # userinfo: never, inside or not
        "http://user@10.1.2.3:9101",
        "http://10.1.2.3:notaport",
        "http://[fe80::1]:9101",
        "not a url",
    ],
)
def test_urls_outside_the_list_or_with_userinfo_are_refused(url: str) -> None:
    assert not ALLOW.allows(url)


def test_an_empty_list_allows_nothing() -> None:
    assert not UrlAllowList.of([]).allows("http://127.0.0.1:9101")
