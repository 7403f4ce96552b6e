"""The trust boundary: who may sign in, who is an admin, and whether admin actions are open at all.

Accounts come from the environment only (settings.auth: ARENA_AUTH__USERS="alice:pw,bob:pw" or a file of
`name:password` lines named by ARENA_AUTH__USERS_FILE); ARENA_AUTH__ADMINS names the admins. With accounts, every
visitor signs in (Gradio's login page) and only admins may load, unload or merge adapters or run evals. Without
accounts, the app is open to everyone who can reach it, so admin actions are allowed only while it listens on
loopback: bound to anything else (a container, a shared box, a Space), they are refused to anonymous visitors.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from app.config import ConfigError, Settings


def _parse(lines: list[str], where: str) -> dict[str, str]:
    accounts: dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, password = entry.partition(":")
        if not sep or not name.strip() or not password:
            raise ConfigError(f"{where} entry {number}: expected name:password (the password is not shown)")
        accounts[name.strip()] = password
    return accounts


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """Accounts (name -> password), admins, and whether the app listens on loopback only."""

    accounts: dict[str, str] = field(default_factory=dict, repr=False)
    admins: frozenset[str] = frozenset()
    loopback: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        """ConfigError (naming the source, never the password) for a malformed entry or an unreadable file."""
        auth = settings.auth
        accounts: dict[str, str] = {}
        if auth.users is not None:
            accounts |= _parse(auth.users.get_secret_value().split(","), "ARENA_AUTH__USERS")
        if auth.users_file is not None:
            try:
                text = Path(auth.users_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"auth.users_file {auth.users_file}: cannot read it ({exc.strerror})") from exc
            accounts |= _parse(text.splitlines(), f"auth.users_file {auth.users_file}")
        unknown = sorted(set(auth.admins) - set(accounts))
        if accounts and unknown:
            raise ConfigError(f"auth.admins names users without an account: {', '.join(unknown)}")
        return cls(accounts, frozenset(auth.admins), is_loopback(settings.ui.host))

    @property
    def login_required(self) -> bool:
        return bool(self.accounts)

    def check_password(self, username: str, password: str) -> bool:
        """Gradio's `auth` callable: constant-time comparison, no user enumeration by timing."""
        expected = self.accounts.get(username, "")
        return hmac.compare_digest(expected.encode(), password.encode()) and bool(expected)

    def may_administer(self, username: str | None) -> bool:
        """Admin actions: a signed-in admin; or, with no accounts configured, anyone while on loopback only."""
        if self.login_required:
            return username is not None and username in self.admins
        return self.loopback

    def refusal(self) -> str:
        """Why an admin action was refused, and how to allow it."""
        if self.login_required:
            return "Only admins may do this: sign in as a user listed in ARENA_AUTH__ADMINS."
        return (
            "Admin actions are off because the app listens on the network without accounts: set ARENA_AUTH__USERS "
            "and ARENA_AUTH__ADMINS (docs/deploy.md), or run it on 127.0.0.1."
        )
