"""The review settings group: GATE_REVIEW_* variables, booleans included."""

from __future__ import annotations

import pytest

from gate.config import ConfigError, load_settings


@pytest.mark.parametrize("raw,expected", [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False),
                                          ("off", False)])
def test_booleans_from_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv("GATE_REVIEW_SESSION_COOKIE_SECURE", raw)
    monkeypatch.setenv("GATE_REVIEW_CLAIM_MINUTES", "30")
    review = load_settings().review
    assert review.session_cookie_secure is expected and review.claim_minutes == 30


def test_a_bad_boolean_is_a_typed_error(monkeypatch):
    monkeypatch.setenv("GATE_REVIEW_SESSION_COOKIE_SECURE", "maybe")
    with pytest.raises(ConfigError):
        load_settings()


def test_the_secure_cookie_setting_reaches_the_app(make_app, tmp_path):
    app = make_app(review={"session_cookie_secure": True})
    assert app.config["SESSION_COOKIE_SECURE"] is True and app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert (tmp_path / "data" / "secret_key").stat().st_mode & 0o077 == 0  # the made key is readable by its owner only
