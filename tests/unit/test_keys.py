import hashlib

from router.keys import KEY_PREFIX, VISIBLE_CHARS, hash_key, new_secret


def test_secret_is_high_entropy_and_unique():
    secrets = {new_secret() for _ in range(1000)}
    assert len(secrets) == 1000
    s = secrets.pop()
    assert s.startswith(KEY_PREFIX) and len(s) - len(KEY_PREFIX) >= 43  # 32 random bytes, base64url


def test_hash_is_sha256_and_never_the_secret():
    s = new_secret()
    assert hash_key(s) == hashlib.sha256(s.encode()).hexdigest()
    assert s not in hash_key(s) and hash_key(s) != hash_key(s + "x")
    assert len(s[: len(KEY_PREFIX) + VISIBLE_CHARS]) == len(KEY_PREFIX) + VISIBLE_CHARS
