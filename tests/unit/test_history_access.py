"""Who may read a topic's history (``http_api.history.check_access``), and the page's JSON."""

from __future__ import annotations

import pytest

from http_api.api_error import AuthError
from http_api.history import check_access, dump_page
from http_api.principal import Principal
from realtime.history import HistoryPage, Publication
from topics import DEFAULT_POLICY


def principal(user_id: str, *scopes: str) -> Principal:
    return Principal(user_id, frozenset(scopes))


@pytest.mark.parametrize(
    ("who", "topic"),
    [
        (principal("ops", "realtime:history"), "remote-control:command.7"),  # any topic
        (principal("7", "user:read:remote-control"), "remote-control:command.7"),  # its own
        (principal("7"), "dream:update.a"),  # public
        (principal("svc", "realtime:publish"), "dream:job:progress.j"),  # public
    ],
)
def test_allowed(who: Principal, topic: str) -> None:
    check_access(who, *DEFAULT_POLICY.check(topic))


@pytest.mark.parametrize(
    ("who", "topic", "missing", "says"),
    [
        (principal("7", "user:read:remote-control"), "remote-control:command.8", None, "not yours"),
        (principal("7"), "remote-control:command.7", ["user:read:remote-control"], "needs the scope"),
        (principal("svc", "realtime:publish"), "remote-control:command.svc", ["user:read:remote-control"], "scope"),
    ],
)
def test_refused(who: Principal, topic: str, missing: list[str] | None, says: str) -> None:
    with pytest.raises(AuthError) as exc:
        check_access(who, *DEFAULT_POLICY.check(topic))
    assert exc.value.status == 403 and says in str(exc.value)
    assert exc.value.extra.get("missing_scopes") == missing


def test_dump_page() -> None:
    page = HistoryPage([Publication(4, "a"), Publication(5, "b")], offset=5, epoch="e1", first=3)
    assert dump_page("dream:update.a", page) == {
        "topic": "dream:update.a",
        "offset": 5,
        "epoch": "e1",
        "first": 3,
        "publications": [{"offset": 4, "message": "a"}, {"offset": 5, "message": "b"}],
    }
