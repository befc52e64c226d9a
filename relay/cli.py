"""`mailping`: the command line. Errors end here as one line and an exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from pixelserver import migrate, storage
from pixelserver.config import ConfigError
from relay import service
from relay.config import Config, config_path, load_config

log = logging.getLogger("mailping")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailping", description=__doc__)
    parser.add_argument("--config", help="TOML file (default: $MAILPING_CONFIG, else built-in)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the relay and the pixel server in one process")
    sub.add_parser("relay", help="run the SMTP relay only")
    sub.add_parser("pixelserver", help="run the pixel server and report pages only")
    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade", "status"])
    sub.add_parser("check-config", help="validate the configuration and say what it would do")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = load_config(config_path(args.config))
        if args.command == "check-config":
            print(describe(cfg))
            return 0
        if args.command == "db":
            return asyncio.run(db_command(cfg, args.action))
        return asyncio.run(run(cfg, args.command))
    except ConfigError as exc:
        print(f"mailping: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except service.SchemaOutOfDate as exc:
        print(f"mailping: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except SQLAlchemyError as exc:
        print(
            f"mailping: database error: {exc.__class__.__name__}: {exc}".splitlines()[0],
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    except OSError as exc:
        print(f"mailping: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 0


def describe(cfg: Config) -> str:
    """What the configuration would do, in words a newcomer can check."""
    up = cfg.upstream
    if cfg.outbox_dir is not None:
        upstream = f"no upstream: copies are stored in {cfg.outbox_dir} (local outbox)"
    else:
        login = f" as {up.username}" if up.username else ""
        upstream = f"{up.host}:{up.port} with {up.tls} TLS{login}"
    auth = {
        "none": "no login (loopback clients only)",
        "upstream": "clients log in with their upstream mail account",
    }[cfg.relay.auth]
    return "\n".join(
        [
            f"configuration: {cfg.source} (valid)",
            f"data directory: {cfg.data_dir}",
            f"database: {_safe_url(cfg.database_url)}",
            f"relay: SMTP on {cfg.relay.listen}, TLS {cfg.relay.tls}, {auth}, "
            f"messages up to {cfg.relay.max_message_size} bytes",
            f"upstream: {upstream}",
            f"pixel server: {cfg.pixelserver.listen}, pixel URLs "
            f"{cfg.pixelserver.public_url.rstrip('/')}/{cfg.pixelserver.pixel_path}/<token>.gif",
            "report page: "
            + (
                "password protected"
                if cfg.pixelserver.report_password_env
                else "only from this machine (no report password set)"
            ),
        ]
    )


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


async def db_command(cfg: Config, action: str) -> int:
    if not cfg.database.url:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    engine = storage.make_engine(cfg.database_url)
    try:
        if action == "upgrade":
            await migrate.upgrade(engine)
        current = await migrate.current_revision(engine)
        print(
            f"database {_safe_url(cfg.database_url)}: schema {current}, "
            f"this MailPing needs {migrate.head_revision()}"
        )
        return 0
    finally:
        await engine.dispose()


async def run(cfg: Config, command: str) -> int:
    engine, sessions = await service.open_store(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    relay = pixel = None
    try:
        if command in ("serve", "pixelserver"):
            pixel = await service.start_pixelserver(cfg, sessions)
            print(f"pixel server and report page on http://{cfg.pixelserver.listen}/", flush=True)
        if command in ("serve", "relay"):
            relay = await service.start_relay(cfg, sessions)
            print(
                f"SMTP relay on {cfg.relay.listen} (TLS {cfg.relay.tls}, auth {cfg.relay.auth})",
                flush=True,
            )
            if cfg.outbox_dir is not None:
                print(f"no upstream configured: copies go to {cfg.outbox_dir}", flush=True)
            host, _, port = cfg.relay.listen.rpartition(":")
            print(
                "send a test mail: swaks --server "
                f"{host.strip('[]')} --port {port} --to someone@example.com "
                "--from you@example.com --add-header 'Content-Type: text/html' "
                "--body '<p>Hello</p>'",
                flush=True,
            )
        await stop.wait()
        print("stopping", flush=True)
    finally:
        if relay is not None:
            await relay.close()
        if pixel is not None:
            await pixel.close()
        await engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
