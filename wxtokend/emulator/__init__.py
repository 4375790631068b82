"""A WeChat emulator: a loopback HTTP server that hands out access_tokens like WeChat does.

It lets people develop offline and lets the end-to-end tests exercise the real client.
Time is compressed by configuration: lifetimes of seconds, a quota "day" of seconds.

What it models:

- ``GET /cgi-bin/token`` (classic): every fetch issues a new token; the previous one keeps
  working for a grace period, anything older dies at once; a daily quota (45009).
- ``POST /cgi-bin/stable_token``: normal mode hands every caller the same token and renews it
  only inside the last ``stable_window`` seconds (the old one lives until its own expiry);
  force mode invalidates at once, at most ``stable_force_daily`` a day and ``stable_force_interval``
  seconds apart.
- The credential errors WeChat returns (40002, 41002, 41004, 40013, 40125/40001, 40164), wrong
  methods (43002), malformed bodies (47001), a per-minute quota (45011).
- ``GET /cgi-bin/getcallbackip`` as the "is this token still good?" check (40001/42001/41001),
  for every kind of token.
- Tickets: ``GET /cgi-bin/ticket/getticket?type=jsapi|wx_card`` (Official Account, Mini
  Program) and WeCom's ``GET /cgi-bin/get_jsapi_ticket`` and
  ``GET /cgi-bin/ticket/get?type=agent_config``. They need a currently valid token of the right
  family (41001 missing, 42001 expired, 40001 invalidated or unknown; 40097 for a bad type).
  Every call issues a new ticket of ``ticket_lifetime`` seconds; the previous ticket of that
  app (WeCom: application) and type keeps working for ``grace`` seconds, older ones die at once,
  like classic tokens. Tickets outlive the token they were fetched with. No ticket quota.
  ``GET /emulator/check-ticket?ticket=T`` tells whether a ticket is valid.
- WeCom (企业微信) ``GET /cgi-bin/gettoken?corpid=&corpsecret=``: apps of ``kind: wecom`` are
  applications identified by corpid and secret together (one corp has several). A repeat fetch
  returns the same token and its remaining life until it expires, then a new one. Errors 41002,
  41004, 40013, 40001 (wrong secret), 45009 (``daily_quota`` per application), 45011, with
  WeCom's ``hint: [...], from ip: ..., more info at ...`` suffix. Counters of WeCom apps are
  keyed by corpid, so the applications of one corp add up.
- Injected faults on the token and ticket endpoints (HTTP 502, errcode -1, garbage bodies,
  slowness), and control endpoints under ``/emulator/`` to read counters, add apps, set faults
  and revoke tokens.

What it does not model (yet): ``clear_quota`` and ``openapi/quota/get``, ticket quotas and
ticket revocation, WeCom's trusted-IP list (60020) and its 40014 for rejected tokens (40001
stands in), third-party platforms, and every other WeChat API. The state keeps per-kind token
slots, per-(app, type) ticket slots, token and ticket indexes and per-app daily usage keyed by
API name, so those slot in as new kinds and new usage keys.

Layout (imports go one way, down this list): ``config`` (settings, YAML), ``replies`` (reply
shapes), ``faults`` (fault draw and effects), ``tokens`` and ``tickets`` (issued credentials),
``core`` (clock, counters, quotas, fault settings: what products share), one module per product
(``official``, ``wecom``), ``state`` (WeChatState: the core with its products), ``control`` and
``routes`` (HTTP), ``cli`` (``wxtokend emulate``). An Open Platform part (component_access_token,
authorizer tokens, pushed component_verify_ticket) goes in as ``open_platform.py``: a class over
``Core`` like ``Official``, registered in ``WeChatState``, with its handlers added in ``routes``.
"""

from wxtokend.emulator.cli import add_arguments, config_from_args, run_from_args
from wxtokend.emulator.config import (
    EmulatedApp,
    EmulatorConfig,
    EmulatorConfigError,
    Faults,
    Grant,
    load_emulator_config,
)
from wxtokend.emulator.faults import Fault
from wxtokend.emulator.routes import Emulator
from wxtokend.emulator.state import WeChatState

__all__ = [
    "EmulatedApp",
    "Emulator",
    "EmulatorConfig",
    "EmulatorConfigError",
    "Fault",
    "Faults",
    "Grant",
    "WeChatState",
    "add_arguments",
    "config_from_args",
    "load_emulator_config",
    "run_from_args",
]
