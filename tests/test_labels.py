"""Label MACs and derived passwords stay what earlier releases computed: targets hold labels and
logins made with them, and a redelivery or a sweep after an upgrade must still read them."""

from __future__ import annotations

import copy
import pickle

import pytest

from jitc.labels import LabelKey

KEY = LabelKey.from_secret("a-label-key-for-the-known-answer")


def test_label_mac_is_hmac_sha256_under_the_derived_label_key() -> None:
    assert KEY.mac("postgresql", "jitc_g", "{}") == "1MHVL1eRBU0s_R-sEzWyxLCbyYPrQR4nuuUntgOdYnk"


def test_password_and_keyed_hash_use_their_own_derived_keys() -> None:
    assert KEY.password("a", "b") == "LWUmo0Bx41tfID063xKj5unsqzd2iZ9ljElil2JAaCc"
    assert KEY.keyed_hash("identity", "a@example.com") == "pqxLS3IeV7Ri-ej3hvjh7g"


def test_each_purpose_and_each_secret_gives_another_mac() -> None:
    other = LabelKey.from_secret("another-label-key-of-enough-length")
    assert KEY.mac("a", "b") != other.mac("a", "b")
    assert KEY.mac("a", "b") != KEY.password("a", "b")
    assert KEY.mac("a", "b") == KEY.mac("a", "b")  # the derived key, kept, is the same one


def test_every_use_of_a_purpose_gives_the_known_answer() -> None:
    """The first uses MAC one-shot under the derived key, later ones copy a keyed state: a
    fresh key (a new batch) and a long-used one (a sweep) agree on every MAC."""
    for _ in range(2):
        key = LabelKey.from_secret("a-label-key-for-the-known-answer")
        macs = [key.mac("postgresql", "jitc_g", "{}") for _ in range(5)]
        assert macs == ["1MHVL1eRBU0s_R-sEzWyxLCbyYPrQR4nuuUntgOdYnk"] * 5
        passwords = [key.password("a", "b") for _ in range(4)]
        assert passwords == ["LWUmo0Bx41tfID063xKj5unsqzd2iZ9ljElil2JAaCc"] * 4


def test_a_label_key_is_immutable_and_never_leaves_in_a_pickle_or_a_copy() -> None:
    key = LabelKey.from_secret("k" * 32)
    for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be pickled"):
            attempt(key)
    with pytest.raises(AttributeError):
        key.secret = b"other"  # type: ignore[misc]
    assert "k" * 32 not in repr(key) and key == LabelKey.from_secret("k" * 32)
