"""One third-party platform, wired: its pushed ticket, component token and authorizers.

The chain WeChat imposes, each link a part: the ``component_verify_ticket`` WeChat
pushes (:class:`~wxtokend.platforms.verify.VerifyTicket`) → the component token
(a plain :class:`~wxtokend.refresher.Refresher` of the component kind, depending
on the ticket) → every authorizer's token (:class:`~wxtokend.platforms.authorizers.
AuthorizerBook`, with the refresh tokens in the :class:`~wxtokend.platforms.vault.Vault`).
Events from the callback (tickets, authorizations) arrive at :meth:`Platform.deliver`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from wxtokend.callback.crypto import MessageCrypto
from wxtokend.clock import Clock
from wxtokend.config import Config, PlatformConfig
from wxtokend.errors import FetchError, StateFileError
from wxtokend.fleet import Fleet
from wxtokend.kinds.suite import PROVIDER_TOKEN
from wxtokend.logs import REDACTOR, get_logger
from wxtokend.metrics import Metrics
from wxtokend.persist import in_writer
from wxtokend.platforms import view
from wxtokend.platforms.authorizers import AuthorizerBook
from wxtokend.platforms.calls import Sender, WireClient
from wxtokend.platforms.fleet_side import FleetSide
from wxtokend.platforms.listing import Listing, save_held, unsaved
from wxtokend.platforms.products import OPEN_PLATFORM, WECOM_SUITE, Product
from wxtokend.platforms.removal import Forget
from wxtokend.platforms.shared import GrantShare
from wxtokend.platforms.vault import PushedTicket, Vault
from wxtokend.platforms.verify import VerifyTicket
from wxtokend.refresher import Refresher
from wxtokend.schedule import Policy, Rng
from wxtokend.store import TokenStore

__all__ = ["PROVIDER_FILE", "Platform"]

PROVIDER_FILE = "provider_access_token"  # a file name, not a credential


def product_lists(product: Product) -> bool:
    """Whether the product can list its accounts (the Open Platform can; WeCom cannot)."""
    return product is OPEN_PLATFORM


class Platform:
    """A platform's parts, started and run together."""

    def __init__(
        self,
        config: PlatformConfig,
        *,
        daemon_config: Config,
        client: Any,
        clock: Clock,
        rng: Rng,
        policy: Policy,
        semaphore: asyncio.Semaphore,
        metrics: Metrics,
        fleet: Fleet | None = None,
    ) -> None:
        self.config = config
        share = GrantShare(fleet, config.component_appid) if fleet is not None else None
        self.name = config.name
        self.clock = clock
        self.log = get_logger(platform=config.name, component_appid=config.component_appid)
        self.store = TokenStore(
            directory=daemon_config.output_dir / config.name,
            file_mode=daemon_config.file_mode,
            gid=daemon_config.file_gid,
        )
        self.vault = Vault(Path(daemon_config.state_dir) / config.name)
        product: Product = WECOM_SUITE if config.product == "wecom" else OPEN_PLATFORM
        self.product = product
        self.ticket = VerifyTicket(
            self.vault,
            name=config.name,
            component_appid=config.component_appid,
            clock=clock,
            log=self.log,
            lifetime=product.ticket_lifetime,
            label=product.ticket_name,
        )
        app = config.component_app()
        loop = functools.partial(
            Refresher,
            source=client,
            store=self.store,
            clock=clock,
            rng=rng,
            policy=policy,
            semaphore=semaphore,
            metrics=metrics,
            fleet=fleet,
        )
        self.component = loop(
            app, kind=product.upper, dependency=self.ticket, stem=product.upper_file
        )
        provider = config.provider_app()  # WeCom: a provider's token, its secret alone
        self.provider = None
        if provider is not None:
            self.provider = loop(provider, kind=PROVIDER_TOKEN, stem=PROVIDER_FILE)
        wire: WireClient = client
        self.sender = Sender(wire, app)
        self.listing = Listing(self.sender, self.component, clock=clock, log=self.log)
        self.book = AuthorizerBook(
            sender=self.sender,
            component=self.component,
            vault=self.vault,
            store=self.store,
            clock=clock,
            rng=rng,
            policy=policy,
            semaphore=semaphore,
            log=self.log,
            # Workers wait on the disk as much as on WeChat, and only calls take a slot of
            # max_concurrency: enough of them keep the group commits full.
            workers=16 * daemon_config.max_concurrency,
            on_outcome=lambda outcome: metrics.authorizer_refresh(config.name, outcome),
            product=product,
            recover=self.listed_grant if product_lists(product) else None,
            share=share,
        )
        self.forget = Forget(self.book, self.vault, self.store, self.log)
        self.in_fleet = FleetSide.of(self, share) if share is not None else None
        self.crypto = MessageCrypto(
            token=config.token.reveal(),
            encoding_aes_key=config.encoding_aes_key.reveal(),
            receiver_id=config.component_appid,
        )
        for key, secret in (("secret", config.secret), ("token", config.token)):
            REDACTOR.register(f"platform-{key}:{config.name}", secret.reveal(), label="<secret>")
        aes = config.encoding_aes_key.reveal()
        REDACTOR.register(f"platform-aes:{config.name}", aes, label="<secret>")
        self.listing_pending = False  # the vault was never seeded: read WeChat's list first

    def start(self) -> None:
        """Prepare both directories, and adopt what an earlier run left (no upstream call)."""
        self.store.ensure_directory()
        self.store.prepare()
        self.vault.prepare()
        try:
            self.ticket.load()
        except StateFileError as exc:
            self.log.warning(
                "kept ticket ignored", reason=str(exc), fix="the next push replaces it"
            )
        self.component.adopt_stored()
        if self.provider is not None:
            self.provider.adopt_stored()
        problems = self.book.adopt_stored(self.config.authorizers)
        for problem in problems:
            self.log.error("refresh token file refused", reason=problem)
        # Not "no grant kept": a start stopped halfway through the list must read it again.
        self.listing_pending = product_lists(self.product) and not self.vault.listed()

    async def run(self) -> None:
        """The component loop, the authorizers, and the list sync a fresh state needs."""
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._kept(self.component.run), name=f"{self.name}/component"),
            asyncio.create_task(self._kept(self.book.run), name=f"{self.name}/authorizers"),
        ]
        if self.provider is not None:
            tasks.append(
                asyncio.create_task(self._kept(self.provider.run), name=f"{self.name}/provider")
            )
        if self.listing_pending:
            tasks.append(asyncio.create_task(self.sync(), name=f"{self.name}/sync"))
        if self.in_fleet is not None:
            tasks.append(asyncio.create_task(self.in_fleet.run(), name=f"{self.name}/fleet"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _kept(self, run: Callable[[], Awaitable[None]]) -> None:
        """Keep a part running: a bug in one must not stop the platform for good."""
        while True:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("platform loop crashed; restarting")
                await self.clock.sleep(5.0)

    def upper_loops(self) -> list[Refresher]:
        """The loops of the platform's own tokens (the component or suite, the provider)."""
        return [loop for loop in (self.component, self.provider) if loop is not None]

    async def sync(self) -> int:
        """Recover every authorized account's refresh token from ``api_get_authorizer_list``;
        once each is in the vault, say so there, so later starts need no list."""
        added = await self.listing.sync(self.book)
        await save_held(self.book.entries, self.vault, self.clock.now(), self.log)
        waiting = unsaved(self.book.entries)
        while waiting:  # each first refresh saves its account's grant
            await self.clock.sleep(1.0)
            waiting = unsaved(self.book.entries, waiting)
        try:
            await in_writer(self.vault.save_listed, self.clock.now())
        except OSError as exc:
            self.log.error("cannot write to state_dir", error=exc.strerror)
        self.listing_pending = False
        return added

    async def listed_grant(self, appid: str) -> str | None:
        return await self.listing.grant_of(appid)

    # -- events from the callback ----------------------------------------------

    async def accept_ticket(self, ticket: str, created_at: float) -> None:
        pushed = PushedTicket(ticket=ticket, created_at=created_at)
        if not self.ticket.is_news(pushed):
            return
        await self.keep_ticket(pushed)
        self.log.info(f"{self.product.ticket_name} received")
        if self.in_fleet is not None:
            await self.in_fleet.publish_ticket(pushed)

    async def keep_ticket(self, pushed: PushedTicket) -> None:
        await in_writer(self.vault.save_ticket, pushed)  # durable before it is used
        self.ticket.hold(pushed)

    async def authorized(self, appid: str | None, code: str) -> None:
        try:
            await self.book.authorize(code, appid)
        except FetchError as exc:
            self.log.error(
                "authorization could not be completed",
                authorizer=appid,
                error=str(exc),
                hint=exc.hint or None,
            )

    async def unauthorized(self, appid: str) -> None:
        """An ``unauthorized`` event: its tokens are dead; forget them and their files,
        and tell the fleet (its other members then ask WeChat about it at once)."""
        if await self.forget(appid) and self.in_fleet is not None:
            await self.in_fleet.publish_removed(appid)

    # -- status ----------------------------------------------------------------

    def summary(self, now: float) -> dict[str, Any]:
        """For ``/v1/platforms``: the upper token(s) and the accounts' counts."""
        return view.summary(self, now)

    def secret_matches(self, given: str) -> bool:
        return _digest_equal(given, self.config.secret.reveal())

    def component_token(self, now: float) -> tuple[str, int] | None:
        record = self.component.record
        if record is None or not self.component.has_valid_token() or record.expires_at - now < 1:
            return None
        return record.access_token, int(record.expires_at - now)

    def authorizer_token(self, appid: str, now: float) -> tuple[str, int] | int:
        entry = self.book.entries.get(appid)
        if entry is None:
            return 61003
        if entry.valid(now) and entry.token is not None and entry.expires_at - now >= 1:
            return entry.token, int(entry.expires_at - now)
        return 61023 if entry.needs_authorization else -1

    def page(self, offset: int, limit: int, now: float) -> dict[str, Any]:
        """For ``/v1/platforms/<name>/authorizers``: one page, in the order they came."""
        return view.page(self.book.entries, offset, limit, now)

    def problems(self) -> list[str]:
        """What keeps this platform from being ready, one line each."""
        found = []
        for loop in (self.component, self.provider):
            if loop is not None and not loop.has_valid_token():
                status = loop.status()
                found.append(f"{loop.credential} token: {status.last_error or 'not fetched yet'}")
        if self.listing_pending:
            found.append("reading the authorizer list (api_get_authorizer_list) at first start")
        counts = self.book.counts()
        if counts["needs_authorization"]:
            found.append(
                f"{counts['needs_authorization']} authorizer(s) need re-authorization"
                " (their refresh token is invalid or unknown)"
            )
        if counts["pending"]:
            found.append(f"{counts['pending']} authorizer token(s) not fetched yet")
        return found


def _digest_equal(given: str, expected: str) -> bool:
    """Constant time, over digests: not even the secret's length shows in the timing."""
    a, b = (hashlib.sha256(s.encode("utf-8", "surrogatepass")).digest() for s in (given, expected))
    return hmac.compare_digest(a, b)
