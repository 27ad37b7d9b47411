"""Log lines: sentences by default, one parseable JSON object per line on request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from module_controller.observability.logging import configure_logging

# What Kopf's per-object loggers attach to each record (kopf ObjectLogger).
KOPF_EXTRAS: dict[str, Any] = {
    # Once kopf is imported (another test may do it), its Event poster on `kopf.objects`
    # reads the settings of every record: these say "do not post".
    "settings": SimpleNamespace(
        posting=SimpleNamespace(enabled=False, level=logging.CRITICAL, loggers=False)
    ),
    "k8s_skip": False,
    "k8s_ref": {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "biz1-7d9f",
        "uid": "0c6e",
        "namespace": "default",
    },
}


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """Where configure_logging writes in these tests; the root logger and asyncio's (which
    kopf.configure quiets) are put back after."""
    root, aio = logging.getLogger(), logging.getLogger("asyncio")
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_aio = (list(aio.handlers), aio.propagate)
    stream = io.StringIO()
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        aio.handlers[:], aio.propagate = saved_aio


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_parse_and_carry_time_level_logger_message_and_extras(
    output: io.StringIO,
) -> None:
    configure_logging("INFO", "json", output)
    log = logging.getLogger("module_controller.vnodes")
    log.info("Base %s came online as node %s.", "10.0.0.5", "virtual-node-a", extra={"base": "a"})
    log.debug("not shown at INFO")
    log.warning("Base a stopped heartbeating.", extra={"silent_seconds": 21.5})

    first, second = _json_lines(output)
    assert first["level"] == "INFO"
    assert first["logger"] == "module_controller.vnodes"
    assert first["message"] == "Base 10.0.0.5 came online as node virtual-node-a."
    assert first["base"] == "a"
    assert first["time"].endswith("+00:00")
    assert set(first) == {"time", "level", "logger", "message", "base"}
    assert (second["level"], second["silent_seconds"]) == ("WARNING", 21.5)


def test_json_keeps_an_exception_and_encodes_odd_extras_as_text(output: io.StringIO) -> None:
    configure_logging("INFO", "json", output)
    log = logging.getLogger("module_controller.tunnels")
    try:
        raise ConnectionError("broker went away")
    except ConnectionError:
        log.exception("Lost the broker.", extra={"since": {1, 2}})

    (entry,) = _json_lines(output)
    assert entry["message"] == "Lost the broker."
    assert "ConnectionError: broker went away" in entry["exception"]
    assert entry["since"] == "{1, 2}"


def test_json_keeps_kopfs_object_reference_but_not_its_internals(output: io.StringIO) -> None:
    configure_logging("INFO", "json", output)
    logging.getLogger("kopf.objects").info("Handler succeeded.", extra=KOPF_EXTRAS)

    (entry,) = _json_lines(output)
    assert entry["k8s_ref"]["name"] == "biz1-7d9f"
    assert "settings" not in entry
    assert "k8s_skip" not in entry


def test_text_lines_are_sentences_prefixed_with_kopfs_object(output: io.StringIO) -> None:
    configure_logging("INFO", "text", output)
    logging.getLogger("kopf.objects").info("Handler succeeded.", extra=KOPF_EXTRAS)
    logging.getLogger("module_controller.registry").info("Base %s is gone.", "a")

    kopf_line, own_line = output.getvalue().splitlines()
    assert kopf_line.endswith(" INFO kopf.objects: [default/biz1-7d9f] Handler succeeded.")
    assert own_line.endswith(" INFO module_controller.registry: Base a is gone.")


def test_configuring_again_switches_format_instead_of_doubling_lines(
    output: io.StringIO,
) -> None:
    configure_logging("INFO", "text", output)
    configure_logging("INFO", "json", output)
    logging.getLogger("module_controller").info("Started.")

    (entry,) = _json_lines(output)
    assert entry["message"] == "Started."


def test_text_escapes_control_characters_so_one_record_is_one_line(
    output: io.StringIO,
) -> None:
    configure_logging("INFO", "text", output)
    log = logging.getLogger("module_controller.vnodes")
    forged = "base\n2026-05-04 10:00:00,000 INFO module_controller.vnodes: forged"
    log.info("Base %s came online.", forged)
    log.warning("Odd name %r and %s.", "a\tb", "c\rd\x1b[31me\u2028f\x85g")
    try:
        raise ValueError("bad base\nsecond line")
    except ValueError:
        log.exception("Heartbeat of %s refused.", "x\ny")

    first, second, third = output.getvalue().splitlines()
    assert first.endswith(
        r"Base base\n2026-05-04 10:00:00,000 INFO module_controller.vnodes: forged came online."
    )
    assert second.endswith(r"Odd name 'a\tb' and c\rd\x1b[31me\u2028f\x85g.")
    assert r"Heartbeat of x\ny refused.\nTraceback (most recent call last):\n" in third
    assert third.endswith(r"ValueError: bad base\nsecond line")


def test_json_lines_stay_one_line_and_keep_the_text_exact(output: io.StringIO) -> None:
    configure_logging("INFO", "json", output)
    name = "base\n1\u2028\u2029\x85\x7f"
    logging.getLogger("module_controller.vnodes").info("Base %s.", name, extra={"base": name})

    (line,) = output.getvalue().splitlines()  # splitlines breaks at \u2028 and \x85 too
    entry = json.loads(line)
    assert (entry["message"], entry["base"]) == (f"Base {name}.", name)


def test_the_level_is_exactly_log_level_and_asyncio_speaks_only_at_debug(
    output: io.StringIO,
) -> None:
    configure_logging("ERROR", "text", output)
    logging.getLogger("module_controller").warning("not shown at ERROR")
    logging.getLogger("asyncio").error("not shown below DEBUG")
    assert output.getvalue() == ""

    configure_logging("DEBUG", "text", output)
    logging.getLogger("asyncio").debug("Using selector: EpollSelector")
    (line,) = output.getvalue().splitlines()
    assert line.endswith(" DEBUG asyncio: Using selector: EpollSelector")
