"""`mailping webhook add|list|remove`: an administrator's view of users' webhooks.

The signing secret is printed once, by `add`, and never again (Settings shows it once too).
"""

from __future__ import annotations

import argparse
from typing import Any

from pixelserver.store import webhooks
from relay import service
from relay.config import Config


class WebhookUsageError(ValueError):
    """A webhook command that cannot be done; the message is the CLI's one line."""


def add_parser(add: Any, common: argparse.ArgumentParser) -> None:
    """`common` (--config, --log-level) is taken after each action too."""
    hook = add("webhook", help="signed webhooks of a user: add, list or remove")
    actions = hook.add_subparsers(dest="action", required=True)
    new = actions.add_parser(
        "add", parents=[common], help="post a user's events to a URL; prints its secret once"
    )
    new.add_argument("--user", required=True, help="the user's address")
    new.add_argument("target", metavar="URL", help="https:// address of the receiver")
    new.add_argument(
        "--events",
        default="",
        help=f"comma-separated events (default: all of {', '.join(webhooks.EVENT_TYPES)})",
    )
    listing = actions.add_parser("list", parents=[common], help="every webhook, or one user's")
    listing.add_argument("--user", help="only this user's")
    remove = actions.add_parser("remove", parents=[common], help="remove a webhook and its history")
    remove.add_argument("target", metavar="ID", help="the id `mailping webhook list` shows")
    remove.add_argument("--user", help="only if it is this user's")


async def webhook_command(cfg: Config, args: argparse.Namespace) -> int:
    engine, sessions = await service.open_store(cfg)
    try:
        async with sessions.begin() as session:
            if args.action == "add":
                try:
                    endpoint, secret = await webhooks.add_endpoint(
                        session,
                        args.user,
                        args.target,
                        allow_private=cfg.webhooks.allow_private,
                        events=args.events.split(","),
                    )
                except webhooks.WebhookError as exc:
                    raise WebhookUsageError(str(exc)) from None
                print(f"webhook {endpoint.id} for {endpoint.user}: {endpoint.url}")
                print(f"events: {', '.join(endpoint.events) or 'all'}")
                print(f"signing secret (shown once, keep it): {secret}")
                return 0
            if args.action == "list":
                rows = await webhooks.endpoints(session, args.user)
                for e in rows:
                    print(
                        f"{e.id}\t{e.user}\t{e.url}\t{','.join(e.events) or 'all events'}"
                        f"\t{e.created_at:%Y-%m-%d %H:%M} UTC"
                    )
                if not rows:
                    print("no webhooks")
                return 0
            if not (args.target or "").isdigit():
                raise WebhookUsageError("usage: mailping webhook remove ID (from webhook list)")
            if not await webhooks.remove_endpoint(session, int(args.target), args.user):
                raise WebhookUsageError(
                    f"no webhook {args.target}" + (f" of {args.user}" if args.user else "")
                )
            print(f"removed webhook {args.target}")
            return 0
    finally:
        await engine.dispose()
