"""API keys and the principals the auth tests call as."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from inference.models import ApiKey


def operator(username: str = "ops") -> User:
    """A staff user with every permission on the orchestrator's models (staff act
    through model permissions, as in the admin; none would see nothing)."""
    user = User.objects.create(username=username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="inference"))
    return user


def make_key(name: str = "client", **fields: Any) -> tuple[ApiKey, str]:
    return ApiKey.objects.create_key(name=name, **fields)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Principals:
    """Everyone the matrix calls as. ``own`` owns the targets; ``other`` is a
    different, valid key; the rest must be refused."""

    own: str
    other: str
    revoked: str
    expired: str
    wrong: str
    staff_session: str
    member_session: str  # a signed-in account without staff rights

    @classmethod
    def create(cls) -> Principals:
        _, own = make_key("own", can_manage_documents=True)
        _, other = make_key("other")
        revoked_key, revoked = make_key("revoked")
        revoked_key.revoked = True
        revoked_key.save()
        _, expired = make_key("expired", expiry_date=timezone.now() - timedelta(minutes=1))
        prefix = own.partition(".")[0]
        staff = operator("matrix-staff")
        client = Client()
        client.force_login(staff)
        member = Client()
        member.force_login(User.objects.create(username="matrix-member"))
        return cls(
            own=own,
            other=other,
            revoked=revoked,
            expired=expired,
            wrong=f"{prefix}.{'x' * 32}",
            staff_session=client.cookies["sessionid"].value,
            member_session=member.cookies["sessionid"].value,
        )

    def headers(self, who: str) -> dict[str, str]:
        """HTTP headers for ``who`` (a staff session is a cookie, not a header)."""
        return {
            "none": {},
            "malformed": {"Authorization": "Bearer not-a-key"},
            "wrong": bearer(self.wrong),
            "revoked": bearer(self.revoked),
            "expired": {"X-API-Key": self.expired},
            "other": {"X-API-Key": self.other},
            "own": bearer(self.own),
            "staff": {"Cookie": f"sessionid={self.staff_session}"},
            "member": {"Cookie": f"sessionid={self.member_session}"},
        }[who]


WHO = ("none", "malformed", "wrong", "revoked", "expired", "other", "own", "staff", "member")
REFUSED = ("none", "malformed", "wrong", "revoked", "expired")
