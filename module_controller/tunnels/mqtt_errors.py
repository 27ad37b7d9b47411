"""Why the broker cannot be reached, in one line a person can act on.

`/readyz` and the logs show it: `[-]mqtt: not authorized (check MQTT_USERNAME /
MQTT_PASSWORD)` says what to fix where `[code:135] Not authorized` does not.

aiomqtt reports failures in two ways. A broker that answers the CONNECT with a refusal gives
an `MqttConnectError` whose `rc` is a paho `ReasonCode` (paho 2 converts the MQTT 3.1.1
return codes: 4 "bad user name or password" becomes 134, 5 "not authorized" becomes 135) or,
in older versions, the plain 3.1.1 number. A socket, DNS or TLS failure becomes
`MqttError(str(error))` raised `from None`: the original exception is still the
`__context__`, so the chain is searched for the most telling cause.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from module_controller.settings import Settings

CREDENTIALS_HINT = "check MQTT_USERNAME / MQTT_PASSWORD"

# CONNACK refusals by MQTT 3.1.1 return code and by the MQTT 5 reason code paho gives them.
_REFUSALS: dict[int, str] = {
    1: "the broker does not speak this MQTT version",
    2: "the broker refused the client id (check MQTT_CLIENT_PREFIX / CLIENT_ID)",
    3: "the broker is unavailable (it refused the connection)",
    4: f"bad user name or password ({CREDENTIALS_HINT})",
    5: f"not authorized ({CREDENTIALS_HINT})",
    0x84: "the broker does not speak this MQTT version",
    0x85: "the broker refused the client id (check MQTT_CLIENT_PREFIX / CLIENT_ID)",
    0x86: f"bad user name or password ({CREDENTIALS_HINT})",
    0x87: f"not authorized ({CREDENTIALS_HINT})",
    0x88: "the broker is unavailable (it refused the connection)",
    0x89: "the broker is busy (it refused the connection)",
    0x8A: "this client is banned by the broker",
    0x8C: f"the broker refused the authentication method ({CREDENTIALS_HINT})",
}

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}


def describe_mqtt_error(error: BaseException, settings: Settings) -> str:
    """One line saying why the broker of `settings` could not be reached or was lost."""
    causes = list(_chain(error))
    for cause in causes:
        described = _describe(cause, settings)
        if described is not None:
            return _one_line(described)
    # Nothing typed in the chain (an error re-raised as plain text): go by the words.
    text = _one_line(str(error)) or type(error).__name__
    lowered = text.lower()
    if "timed out" in lowered:
        return f"timed out waiting for the broker at {_where(settings)}"
    if "connection refused" in lowered:
        return _refused(settings)
    return f"{text} ({_where(settings)})"


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what caused it, following `__context__` even where it was suppressed."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _where(settings: Settings) -> str:
    return f"{settings.mqtt_broker}:{settings.mqtt_port}"


def _refused(settings: Settings) -> str:
    return (
        f"connection refused: nothing listens on {_where(settings)} (check MQTT_BROKER / MQTT_PORT)"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(error: BaseException, settings: Settings) -> str | None:
    """The cause `error` stands for, or None when it says nothing more than its wrapper."""
    if isinstance(error, aiomqtt.MqttCodeError):
        return _describe_code(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or str(error)
        return (
            f"TLS verification of the broker {_where(settings)} failed: {detail} "
            f"(check MQTT_CA_PATH {settings.mqtt_ca_path})"
        )
    if isinstance(error, ssl.SSLError):
        detail = error.reason or str(error)
        return (
            f"TLS handshake with {_where(settings)} failed: {detail} "
            "(does MQTT_PORT accept TLS? check MQTT_CA_PATH, MQTT_CLIENT_CRT_PATH)"
        )
    if isinstance(error, socket.gaierror):
        return f"cannot resolve MQTT_BROKER {settings.mqtt_broker!r}: {error.strerror or error}"
    if isinstance(error, ConnectionRefusedError):
        return _refused(settings)
    if isinstance(error, TimeoutError):
        return f"timed out waiting for the broker at {_where(settings)}"
    if isinstance(error, ConnectionError):  # reset, aborted, broken pipe
        return f"connection to {_where(settings)} lost: {error.strerror or error}"
    if isinstance(error, OSError):
        if error.errno in _UNREACHABLE:
            return f"cannot reach {_where(settings)}: {error.strerror}"
        return f"{_where(settings)}: {error.strerror or error}"
    return None


def _describe_code(error: aiomqtt.MqttCodeError) -> str:
    rc = error.rc
    code = rc.value if isinstance(rc, ReasonCode) else rc
    if isinstance(error, MqttConnectError):
        if isinstance(code, int) and code in _REFUSALS:
            return _REFUSALS[code]
        return f"the broker refused the connection: {_reason(rc)}"
    # "Unexpected disconnection", "Could not subscribe to topic", "Could not publish message"
    what = str(error.args[0]) if error.args else "the broker failed"
    return f"{what[:1].lower()}{what[1:]}: {_reason(rc)}"


def _reason(rc: int | ReasonCode | None) -> str:
    """The reason in words, without aiomqtt's `[code:N]`, which means nothing to people."""
    if isinstance(rc, ReasonCode):
        return str(rc)
    if isinstance(rc, int):
        return str(mqtt.error_string(rc))
    return "no reason given"
