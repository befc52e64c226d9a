"""`mailping`: the command line. Errors end here as one line and an exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import getpass
import json
import logging
import re
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import aiosmtplib
from sqlalchemy.exc import SQLAlchemyError

from pixelserver import oauthcode
from pixelserver.config import ConfigError
from pixelserver.store import erasure, migrate
from pixelserver.store.accounts import (
    local_usernames,
    remove_local_user,
    revoke_user_tokens,
    set_local_user,
    user_exists,
)
from pixelserver.store.reclassify import Progress, count_hits, reclassify
from pixelserver.store.schema import make_engine
from pixelserver.store.websessions import end_user_sessions
from pixelserver.verdicts import classify
from pixelserver.verdicts.networks import mask
from relay import auth, certs, queue_admin, service, webhook_cli
from relay.config import Config, config_path, config_warnings, load_config
from relay.digest.runner import UnknownUser
from relay.forward import SmtpUpstream
from relay.oauth import TokenError
from relay.pace import limit_for
from relay.spool import Spool
from relay.submit import is_google_host
from relay.workers import supervise

log = logging.getLogger("mailping")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1
MIN_PASSWORD = 10


class UsageError(Exception):
    """A command was given wrong arguments; the message says what to do instead."""


def build_parser() -> argparse.ArgumentParser:
    """The command line. `--config` and `--log-level` belong to every subcommand as well as to
    `mailping` itself: people type `mailping serve --config FILE` as often as the other order.
    Their defaults are suppressed in both places, so a value given in one is never overwritten
    by the other's default."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="TOML file (default: $MAILPING_CONFIG, else built-in)",
    )
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING, ERROR (INFO)"
    )
    parser = argparse.ArgumentParser(prog="mailping", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kw: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    for name, words in (
        ("serve", "run the relay and the pixel server in one process"),
        ("relay", "run the SMTP relay only"),
        ("pixelserver", "run the pixel server and report pages only"),
    ):
        server = add(name, help=words)
        server.add_argument(
            "--workers",
            type=int,
            help="processes sharing the ports (default: pixelserver.workers in the config)",
        )
        server.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
        server.add_argument("--worker-count", type=int, default=1, help=argparse.SUPPRESS)
    db = add("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade", "status"])
    check = add("check-config", help="validate the configuration and say what it would do")
    check.add_argument(
        "--try-upstream",
        action="store_true",
        help="also log in to the upstream once (with an access token for upstream.auth = "
        '"xoauth2"), then log out; sends nothing',
    )
    user = add("user", help='relay logins for relay.auth = "local"')
    user.add_argument(
        "action",
        choices=["add", "remove", "list", "logout", "erase"],
        help="logout: end every web session of the user (remove does that too, and revokes "
        "their API tokens); erase: delete the user and everything of theirs (GDPR art. 17)",
    )
    user.add_argument("name", nargs="?", help="login name (usually an email address)")
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of asking",
    )
    forget = add(
        "forget", help="erase a recipient on their request (GDPR art. 17); never track them again"
    )
    forget.add_argument("address", help="the recipient's email address")
    forget.add_argument("--user", help="only in this user's report (default: every user's)")
    cls = add(
        "classify",
        help="judge pixel fetches: JSON lines on stdin, or one fetch explained in words",
    )
    cls.add_argument("--ip", help="the fetching address")
    cls.add_argument("--ua", default="", help="its User-Agent")
    cls.add_argument("--after", help="time since sending: 40m, 2h, 3s, 1d")
    cls.add_argument("--method", default="GET")
    cls.add_argument("--recipient", default="", help="the copy's recipient address")
    cls.add_argument(
        "--mailbox",
        default="",
        help="the recipient's mailbox provider as its MX names it (google, microsoft, ...)",
    )
    recls = add("reclassify", help="judge stored hits again after a rule or data change")
    recls.add_argument("--since", help="only hits from this date on (YYYY-MM-DD)")
    recls.add_argument(
        "--refresh-networks",
        action="store_true",
        help="look networks up again in the current data (from the stored /24, /48)",
    )
    geoip = add("geoip", help="the network and location data in use")
    geoip.add_argument("action", choices=["status"])
    nets = add("networks", help="rebuild the fetcher-network table from its sources")
    nets.add_argument("action", choices=["update"])
    nets.add_argument("--data-dir", help="where to write it (default: the installed data)")
    dig = add("digest", help="show or send a user's daily digest now")
    dig.add_argument("--user", required=True, help="the user's address")
    what = dig.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--preview", action="store_true", help="print the text version, write the HTML to a file"
    )
    what.add_argument(
        "--send-now",
        action="store_true",
        help="send it now (the scheduled digest still comes at its hour)",
    )
    dig.add_argument(
        "--html", default="digest-preview.html", help="where --preview writes the HTML version"
    )
    queue = add("queue", help="the outbound queue: list waiting mail, retry it now, or drop it")
    queue.add_argument("action", choices=["list", "retry", "drop"], nargs="?", default="list")
    queue.add_argument("ids", nargs="*", help="message ids from `mailping queue list`")
    webhook_cli.add_parser(add, common)
    cert = add("cert", help="make a self-signed TLS certificate and key for testing")
    cert.add_argument("--host", default="localhost", help="name or address the certificate is for")
    cert.add_argument("--out", default=".", help="folder for cert.pem and key.pem")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # (Suppressed defaults: an option given nowhere is absent; the parent parser's actions are
    # shared with every subparser, so a default set on one would overwrite a value in another.)
    args.config = getattr(args, "config", None)
    args.log_level = getattr(args, "log_level", "INFO")

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = load_config(config_path(args.config))
        if args.command == "check-config":
            print(describe(cfg))
            for warning in config_warnings(cfg):
                print(f"mailping: {warning}", file=sys.stderr)
            if args.try_upstream:
                return asyncio.run(try_upstream(cfg))
            return 0
        if args.command == "db":
            return asyncio.run(db_command(cfg, args.action))
        if args.command == "user":
            return asyncio.run(user_command(cfg, args.action, args.name, args.password_stdin))
        if args.command == "forget":
            return asyncio.run(forget_command(cfg, args.address, args.user))
        if args.command == "cert":
            return cert_command(args.host, Path(args.out))
        if args.command == "queue":
            return queue_command(cfg, args.action, args.ids)
        if args.command == "networks":
            return networks_command(args.data_dir)
        if args.command == "geoip":
            for src in service.make_networks(cfg).sources():
                print(
                    f"{src.what}: {src.name}"
                    + (f", {src.date}" if src.date else "")
                    + (f"; licence: {src.licence}" if src.licence else "")
                    + (f"; {src.attribution}" if src.attribution else "")
                    + (f" <{src.link}>" if src.link else "")
                )
            return 0
        if args.command == "digest":
            return asyncio.run(digest_command(cfg, args))
        if args.command == "webhook":
            return asyncio.run(webhook_cli.webhook_command(cfg, args))
        if args.command == "classify":
            return classify_command(cfg, args)
        if args.command == "reclassify":
            return asyncio.run(reclassify_command(cfg, args.since, args.refresh_networks))
        if args.worker_index is not None:
            cfg = dataclasses.replace(cfg, worker=args.worker_index, worker_count=args.worker_count)
            return asyncio.run(run(cfg, args.command))
        workers = args.workers or cfg.pixelserver.workers
        if not 1 <= workers <= 64:
            raise UsageError("--workers takes 1 to 64 processes")
        if workers > 1:
            return supervise(cfg, list(argv if argv is not None else sys.argv[1:]), workers)
        return asyncio.run(run(cfg, args.command))
    except ConfigError as exc:
        print(f"mailping: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (service.SchemaOutOfDate, service.ListenError) as exc:
        print(f"mailping: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except SQLAlchemyError as exc:
        print(
            f"mailping: database error: {exc.__class__.__name__}: {exc}".splitlines()[0],
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    except (UsageError, webhook_cli.WebhookUsageError) as exc:
        print(f"mailping: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"mailping: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 0


async def try_upstream(cfg: Config) -> int:
    """check-config --try-upstream: one login as the relay would do it, in one line."""
    upstream = service.make_upstream(cfg)
    if not isinstance(upstream, SmtpUpstream):
        print("upstream: none configured (local outbox): nothing to try")
        return 0
    how = "XOAUTH2 with a new access token" if upstream.oauth else "a password"
    who = cfg.upstream.username or "(no login)"
    try:
        smtp = await upstream.connect(None)
    except TokenError as exc:
        print(f"mailping: upstream: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except aiosmtplib.SMTPAuthenticationError as exc:
        print(
            f"mailping: upstream: {upstream.describe()} refused the login as {who}: "
            f"{exc.code} {exc.message}",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    except (aiosmtplib.SMTPException, OSError) as exc:
        print(f"mailping: upstream: could not reach {upstream.describe()}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await smtp.quit()
    print(f"upstream: logged in to {upstream.describe()} as {who} with {how}")
    return 0


def queue_command(cfg: Config, action: str, ids: list[str]) -> int:
    spool = Spool(cfg.spool_dir)
    try:
        if action == "list":
            lines = queue_admin.list_queue(spool)
        elif action == "retry":
            lines = queue_admin.retry_now(spool, ids)
        else:
            lines = queue_admin.drop(spool, ids)
    except queue_admin.QueueAdminError as exc:
        raise UsageError(str(exc)) from None
    print("\n".join(lines))
    return 0


def describe(cfg: Config) -> str:
    """What the configuration would do, in words a newcomer can check."""
    up = cfg.upstream
    if cfg.outbox_dir is not None:
        upstream = f"no upstream: copies are stored in {cfg.outbox_dir} (local outbox)"
    else:
        login = f" as {up.username}" if up.username else ""
        if up.auth == "xoauth2":
            login += f" (XOAUTH2, tokens from {up.oauth.token_url} for {up.oauth.client_id})"
        upstream = f"{up.host}:{up.port} with {up.tls} TLS{login}"
    auth = {
        "none": "no login (loopback clients only)",
        "upstream": "clients log in with their upstream mail account",
        "local": "clients log in with users made by `mailping user add`",
    }[cfg.relay.auth]
    return "\n".join(
        [
            f"configuration: {cfg.source} (valid)",
            f"data directory: {cfg.data_dir}",
            f"database: {_safe_url(cfg.database_url)}",
            f"relay: SMTP on {cfg.relay.listen}, TLS {cfg.relay.tls}, {auth}, "
            f"messages up to {cfg.relay.max_message_size} bytes",
            f"upstream: {upstream}",
            *(
                [
                    "users' own accounts: "
                    + " and ".join(oauthcode.LABELS[p] for p in cfg.connect.offered)
                    + " can be connected in Settings (their mail then goes out as them)"
                ]
                if cfg.connect.offered
                else []
            ),
            f"queue: {_queue_words(cfg)}",
            f"pixel server: {cfg.pixelserver.listen}, pixel URLs "
            f"{cfg.pixelserver.public_url.rstrip('/')}/{cfg.pixelserver.pixel_path}/<token>.gif",
            f"digest: {_digest_words(cfg)}",
            "webhooks: "
            + (
                "any http(s) target, private addresses included ([webhooks] allow_private)"
                if cfg.webhooks.allow_private
                else "https targets resolving to public addresses only"
            )
            + f", {cfg.webhooks.timeout_seconds} s to answer",
            f"report page: {_report_access(cfg)}",
        ]
    )


def _report_access(cfg: Config) -> str:
    """Who may read the report, as the pages will decide it."""
    p = cfg.pixelserver
    if cfg.relay.auth != "none":
        who = (
            "their mail account"
            if cfg.relay.auth == "upstream"
            else "logins from `mailping user add`"
        )
        return (
            f"users log in with {who} and see their own mail; sessions end after "
            f"{p.session_idle_minutes} minutes idle and {p.session_max_hours} hours at most"
        )
    if p.report_password_env:
        return "password protected (report password), for everyone's mail"
    return "only from this machine (no report password set)"


def _queue_words(cfg: Config) -> str:
    q = cfg.queue
    pace = limit_for(cfg.upstream.host, cfg.upstream.max_per_minute)
    paced = f", {pace} submissions a minute per account" if pace else ""
    keep = (
        "waiting copies need the sender's password, kept in memory only: a restart fails them"
        if cfg.relay.auth == "upstream" and not cfg.upstream.username
        else "waiting copies survive restarts"
    )
    return (
        f"{cfg.spool_dir}; replies within {q.reply_within} s; retries after "
        f"{', '.join(map(str, q.retry_seconds))} s until {q.give_up_after}{paced}; {keep}"
    )


def _digest_words(cfg: Config) -> str:
    d = cfg.digest
    if not d.enabled:
        return "off unless a user turns it on in Settings"
    login = cfg.digest_credentials
    sender = d.from_address or f"mailping@{cfg.relay.hostname or '<this host>'}"
    how = (
        "into the local outbox"
        if cfg.outbox_dir
        else (
            f"through the upstream as {login[0]}"
            if login
            else "through the upstream without a login"
        )
    )
    return f"daily at {d.hour:02d}:00 {d.timezone} by default, from {sender}, {how}"


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
    engine = make_engine(cfg.database_url)
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


async def digest_command(cfg: Config, args: argparse.Namespace) -> int:
    engine, sessions = await service.open_store(cfg)
    try:
        runner = service.make_digest_runner(cfg, sessions)
        try:
            if args.preview:
                data, mail = await runner.preview(args.user)
                print(f"Subject: {mail.subject}\n")
                print(mail.text, end="")
                Path(args.html).write_text(mail.html, encoding="utf-8")
                print(f"\n(HTML version written to {args.html})", file=sys.stderr)
                return 0
            sent = await runner.send_now(args.user)
        except UnknownUser:
            raise UsageError(f"no user {args.user!r}: nobody with that address sent mail") from None
        if sent.status != "sent":
            print(f"mailping: digest for {sent.user} not sent: {sent.error}", file=sys.stderr)
            return EXIT_RUNTIME
        print(f"digest for {sent.user} sent through {runner.upstream_name}")
        return 0
    finally:
        await engine.dispose()


async def user_command(cfg: Config, action: str, name: str | None, from_stdin: bool) -> int:
    if action != "list" and not name:
        raise UsageError(f"`mailping user {action}` needs a login name")
    engine, sessions = await service.open_store(cfg)
    try:
        if action == "list":
            async with sessions() as session:
                for username in await local_usernames(session):
                    print(username)
            return 0
        assert name is not None
        if action == "remove":
            async with sessions.begin() as session:
                removed = await remove_local_user(session, name)
                if not removed and not await user_exists(session, name):
                    raise UsageError(f"no user {name!r}")
                ended = await end_user_sessions(session, name)
                revoked = await revoke_user_tokens(session, name)
            print(f"removed {name}; ended {ended} web sessions, revoked {revoked} API tokens")
            if not removed:
                print(
                    'note: no local login to remove; with relay.auth = "upstream" they can '
                    "log in again with their mail account"
                )
            return 0
        if action == "erase":
            done = await erasure.erase_user(sessions, name, outbox_dir=cfg.outbox_dir)
            if done is None:
                raise UsageError(f"no user {name!r}")
            print(f"erased {name.lower()}: {done.words()}")
            return 0
        if action == "logout":
            async with sessions.begin() as session:
                ended = await end_user_sessions(session, name)
            print(f"ended {ended} web sessions of {name.lower()}")
            return 0
        password = read_password(from_stdin)
        digest = await asyncio.to_thread(auth.hash_password, password)
        async with sessions.begin() as session:
            created = await set_local_user(session, name, digest)
            # A new password ends the sessions opened with the old one (ASVS 3.3.3).
            ended = 0 if created else await end_user_sessions(session, name)
        print(f"{'added' if created else 'changed the password of'} {name.lower()}")
        if ended:
            plural = "s" if ended != 1 else ""
            print(f"ended {ended} web session{plural} made with the old password")
        if cfg.relay.auth != "local":
            print(
                f'note: relay.auth is "{cfg.relay.auth}" in {cfg.source}; set it to "local" '
                "for these logins to be used"
            )
        return 0
    finally:
        await engine.dispose()


async def forget_command(cfg: Config, address: str, user: str | None) -> int:
    if "@" not in address.strip("@"):
        raise UsageError(f"{address!r} is not an email address")
    engine, sessions = await service.open_store(cfg)
    try:
        done = await erasure.forget_recipient(
            sessions, address, user=user, outbox_dir=cfg.outbox_dir
        )
    finally:
        await engine.dispose()
    print(f"forgot {address.strip().lower()}: {done.words()}; it will not be tracked again")
    return 0


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password must have at least {MIN_PASSWORD} characters")
    return password


def parse_duration(text: str) -> float:
    """ "40m" -> 2400.0; units s, m, h, d; a bare number is seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise UsageError(f"--after: {text!r} is not a duration like 40m, 2h or 30s")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def classify_command(cfg: Config, args: argparse.Namespace) -> int:
    networks = service.make_networks(cfg)
    upstream_google = is_google_host(cfg.upstream.host)
    if args.ip:
        after = parse_duration(args.after) if args.after else None
        verdict = classify.classify(
            classify.HitFacts(
                network=networks.facts(args.ip),
                ua=args.ua,
                method=args.method,
                seconds_after_send=after,
                recipient=args.recipient,
                upstream_google=upstream_google,
                mailbox_provider=args.mailbox,
            )
        )
        print(f"{verdict.kind} (confidence {verdict.confidence:.2f}, rule {verdict.rule})")
        if verdict.client:
            print(f"client: {verdict.client}")
        for reason in verdict.reasons:
            print(f"  {reason.code}: {reason.text}")
        return 0
    bad = 0
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            facts = hit_facts_from_json(json.loads(line), networks, upstream_google)
        except (ValueError, TypeError, KeyError) as exc:
            bad += 1
            print(json.dumps({"error": f"line {number}: {exc}"}), flush=True)
            continue
        print(json.dumps(classify.classify(facts).as_json()), flush=True)
    return 1 if bad else 0


def networks_command(data_dir: str | None) -> int:
    """Rebuild fetcher-networks.txt from the installed packages and the operators' pages."""
    from pixelserver.verdicts import netbuild

    path = netbuild.update(Path(data_dir) if data_dir else netbuild.DATA)
    rows = sum(1 for line in path.read_text().splitlines() if line[:1] not in ("#", "@", ""))
    print(f"{path}: {len(netbuild.OPERATORS)} operators, {rows} prefixes")
    return 0


def hit_facts_from_json(obj: object, networks, upstream_google: bool) -> classify.HitFacts:
    """One input line of `mailping classify`; raises ValueError naming what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    if not isinstance(obj.get("ip"), str):
        raise ValueError('"ip" (a string) is required')
    seconds = obj.get("seconds_after_send")
    if seconds is not None and not isinstance(seconds, int | float):
        raise ValueError('"seconds_after_send" must be a number')
    prior = []
    for p in obj.get("prior_hits") or []:
        if not isinstance(p, dict) or not isinstance(p.get("ip"), str):
            raise ValueError('each of "prior_hits" needs an "ip"')
        prior.append(
            classify.PriorHit(
                mask(p["ip"]), str(p.get("ua", "")), float(p.get("seconds_after_send") or 0)
            )
        )
    return classify.HitFacts(
        network=networks.facts(obj["ip"]),
        ua=str(obj.get("ua") or ""),
        method=str(obj.get("method") or "GET"),
        headers=obj.get("headers") or {},
        seconds_after_send=seconds,
        prior=prior,
        recipient=str(obj.get("recipient") or ""),
        upstream_google=upstream_google,
        mailbox_provider=str(obj.get("mailbox_provider") or ""),
    )


async def reclassify_command(cfg: Config, since: str | None, refresh: bool) -> int:
    try:
        since_dt = dt.datetime.fromisoformat(since).replace(tzinfo=dt.UTC) if since else None
    except ValueError:
        raise UsageError(f"--since: {since!r} is not a date like 2026-11-01") from None
    engine, sessions = await service.open_store(cfg)
    try:
        networks = await asyncio.to_thread(service.make_networks, cfg) if refresh else None
        progress = Progress(await count_hits(sessions, since_dt))
        report = await reclassify(
            sessions,
            since=since_dt,
            networks=networks,
            upstream_google=is_google_host(cfg.upstream.host),
            progress=progress,
        )
        progress.done()
    finally:
        await engine.dispose()
    print("\n".join(report.lines()))
    return 0


def cert_command(host: str, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / "cert.pem", out / "key.pem"
    certs.make_self_signed(host, cert, key)
    print(f"wrote {cert} and {key} (self-signed for {host}, for testing only)")
    print(f'in the config: [relay] tls = "starttls"  cert_file = "{cert}"  key_file = "{key}"')
    return 0


WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
HINT_LOGIN = "you@example.com"


def swaks_hint(cfg: Config) -> list[str]:
    """The swaks command that sends a first test mail through this relay as configured: with
    the TLS mode it speaks (--tls for STARTTLS, --tlsc for TLS on connect) and the login it
    requires (swaks asks for the password, so none is printed). A hint without them would fail
    on the very relay it was printed for."""
    host, _, port = cfg.relay.listen.rpartition(":")
    host = host.strip("[]")
    argv = ["swaks", "--server", WILDCARDS.get(host, host), "--port", port]
    argv += {"starttls": ["--tls"], "implicit": ["--tlsc"]}.get(cfg.relay.tls, [])
    if cfg.relay.auth != "none":
        argv += ["--auth", "-au", HINT_LOGIN]
    return argv + [
        "--to",
        "someone@example.com",
        "--from",
        HINT_LOGIN,
        "--add-header",
        "Content-Type: text/html",
        "--body",
        "<p>Hello</p>",
    ]


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
            print(f"send a test mail: {shlex.join(swaks_hint(cfg))}", flush=True)
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
