"""JSON logs: one object per line, fields from `extra`, client errors not at ERROR."""

from __future__ import annotations

import logging
import logging.config

import orjson
import pytest

from quotaflow.logs import logging_config


def test_log_lines_are_json_with_extra_fields_and_bad_requests_are_info(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logging.config.dictConfig(logging_config("INFO"))
    try:
        logging.getLogger("quotaflow.test").info("hello", extra={"tenant_id": "acme"})
        logging.getLogger("aiohttp.server").error("Error handling request from 10.0.0.1")
        logging.getLogger("aiohttp.server").error("something else broke")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["msg"] == "hello"
    assert lines[0]["tenant_id"] == "acme"
    assert [line["level"] for line in lines[1:]] == ["info", "error"]


def _stripe_request_lines(level: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The `stripe` logger's lines while the real SDK tries one request to a closed port."""
    import stripe

    from quotaflow.commands.localkafka import free_port

    logging.config.dictConfig(logging_config(level))
    try:
        client = stripe.StripeClient(
            "sk_test_logs",
            base_addresses={"api": f"http://127.0.0.1:{free_port()}"},
            max_network_retries=0,
        )
        with pytest.raises(stripe.APIConnectionError):
            client.v1.customers.retrieve("cus_1")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    return [line["msg"] for line in lines if line["logger"] == "stripe"]


def test_the_stripe_sdk_logs_requests_only_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    assert _stripe_request_lines("INFO", capsys) == []
    assert any("Request to Stripe api" in msg for msg in _stripe_request_lines("DEBUG", capsys))
