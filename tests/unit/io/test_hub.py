"""pipeline/io/hub.py: repo-name and branch checks (fuzzed), and which failures are retried."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import PublishError
from pipeline.io.hub import check_repo_id, check_revision, is_transient
from pipeline.publish import PushConfig


@given(
    st.one_of(
        st.text(max_size=120), st.from_regex(r"[A-Za-z0-9_.\-]{1,12}/[A-Za-z0-9_.\-]{1,12}", fullmatch=True)
    )
)
def test_repo_id_check_accepts_only_owner_slash_name(name):
    part = r"(?![.-])[A-Za-z0-9_.\-]{1,96}(?<![.-])"
    expected = bool(re.fullmatch(rf"{part}/{part}", name)) and "--" not in name and ".." not in name
    expected = expected and not name.endswith(".git")
    try:
        check_repo_id(name)
        accepted = True
    except PublishError:
        accepted = False
    assert accepted == expected


@pytest.mark.parametrize(
    "name", ["demo", "me/de mo", "me/demo/x", "-me/demo", "me/demo.", "me/de--mo", "me/ü"]
)
def test_invalid_repo_names_are_refused_before_anything(name):
    with pytest.raises(PublishError, match="is not a Hub repo id"):
        PushConfig(repo=name)


@pytest.mark.parametrize("branch", ["v1", "release/2026-12", "a.b_c"])
def test_branch_names_git_accepts_pass(branch):
    assert check_revision(branch) == branch


@pytest.mark.parametrize("branch", ["", "a..b", "/x", "x/", "refs/heads/x", "a b", "x.", "a//b"])
def test_branch_names_git_refuses_are_refused(branch):
    with pytest.raises(PublishError, match="not a valid branch name"):
        check_revision(branch)


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _HTTPError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(status_code)
        self.response = _Response(status_code)


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (_HTTPError(429), True),
        (_HTTPError(500), True),
        (_HTTPError(504), True),
        (_HTTPError(401), False),
        (_HTTPError(403), False),
        (_HTTPError(404), False),
        (ConnectionResetError(), True),
        (ValueError(), False),
    ],
)
def test_only_rate_limits_server_errors_and_dropped_connections_are_retried(exc, retried):
    assert is_transient(exc) is retried
