"""Kafka client settings for aiokafka and Faust, derived from :class:`Settings` (SASL/SSL pass-through)."""

from __future__ import annotations

import ssl
from typing import Any

from streamrec.config import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
        certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
    )


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap_servers": settings.resolved_bootstrap(),
        "security_protocol": settings.security_protocol,
    }
    ctx = ssl_context(settings)
    if ctx is not None:
        conf["ssl_context"] = ctx
    if settings.sasl_mechanism:
        conf["sasl_mechanism"] = settings.sasl_mechanism
        conf["sasl_plain_username"] = settings.sasl_username
        conf["sasl_plain_password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    return conf


def faust_credentials(settings: Settings) -> Any:
    import faust

    ctx = ssl_context(settings)
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
            mechanism=settings.sasl_mechanism,
            ssl_context=ctx,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


def faust_brokers(settings: Settings) -> list[str]:
    return [f"kafka://{hp.strip()}" for hp in settings.resolved_bootstrap().split(",") if hp.strip()]
