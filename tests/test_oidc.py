"""OpenID Connect sign-in (shared/oidc.py) against a real provider process (tests/oidc_provider.py):
what a valid token proves, every way a token is refused, key rotation and the rate limit on
refreshes, and a provider that is down, slow, or not the one configured."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

from shared.errors import BackendUnavailable, Unauthorized
from shared.identity import Identity
from shared.oidc import OidcVerifier, looks_like_jwt, verifier_from_settings
from shared.settings import ConfigurationError, Settings, load_settings
from tests.local_servers import free_port
from tests.oidc_provider import OidcProvider, running_provider
from tests.waiting import eventually

AUDIENCE = "maas"


class Clock:
    """Epoch seconds that a test moves: "an hour later" takes no time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    """One provider for the module; tests that rotate its key leave the old ones published."""
    with running_provider() as started:
        yield started


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(provider: OidcProvider, clock: Clock) -> OidcVerifier:
    return OidcVerifier(provider.issuer, AUDIENCE, clock=clock)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _unsigned(header: dict[str, Any], payload: Any, signature: str = "c2ln") -> str:
    """A token with this header and payload, and a signature that is not one."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{signature}"


def refused(verifier: OidcVerifier, token: str) -> str:
    """The refusal's message, checked to be one line that quotes no part of the token."""
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token)
    message = caught.value.message
    assert "\n" not in message
    assert not any(token[i:i + 12] in message for i in range(len(token) - 11)), message
    return message


# What a valid token proves.

def test_a_valid_token_is_the_identity_it_names(provider: OidcProvider, verifier: OidcVerifier) -> None:
    token = provider.token(sub="alice", email="alice@example.com", groups=["team-a", "maas-admins"])
    assert verifier.verify(token) == Identity(
        subject="alice", method="oidc", email="alice@example.com", groups=("team-a", "maas-admins"),
        issuer=provider.issuer,
    )
    assert verifier.verify(token).actor == "oidc:alice"  # the subject, never a claimed address


def test_an_audience_list_that_contains_ours_and_no_groups_or_email(
    provider: OidcProvider, verifier: OidcVerifier,
) -> None:
    identity = verifier.verify(provider.token(sub="bob", aud=["other-app", AUDIENCE]))
    assert (identity.subject, identity.email, identity.groups) == ("bob", None, ())


def test_an_email_the_provider_has_not_verified_names_no_one(provider: OidcProvider, verifier: OidcVerifier) -> None:
    unverified = provider.token(sub="eve", email="alice@example.com", claims={"email_verified": False})
    assert verifier.verify(unverified).email is None
    verified = provider.token(sub="alice", email="alice@example.com", claims={"email_verified": True})
    assert verifier.verify(verified).email == "alice@example.com"


def test_the_claims_are_configurable(provider: OidcProvider, clock: Clock) -> None:
    verifier = OidcVerifier(provider.issuer, AUDIENCE, user_claim="preferred_username", email_claim="mail",
                            groups_claim="roles", clock=clock)
    token = provider.token(sub="f81d4fae", claims={"preferred_username": "carol", "mail": "carol@example.com",
                                                        "roles": ["viewer"], "email": "other@example.com"})
    assert verifier.verify(token) == Identity(subject="carol", method="oidc", email="carol@example.com",
                                              groups=("viewer",), issuer=provider.issuer)


@pytest.mark.parametrize("alg", ["RS384", "PS256", "ES256", "ES384", "EdDSA"])
def test_each_asymmetric_algorithm_verifies(provider: OidcProvider, verifier: OidcVerifier, alg: str) -> None:
    provider.rotate(alg)
    token = provider.token(sub=f"user-{alg}")
    assert unb64(token.split(".")[0])["alg"] == alg
    assert verifier.verify(token).subject == f"user-{alg}"


def test_nothing_is_fetched_before_the_first_token(provider: OidcProvider, clock: Clock) -> None:
    before = provider.requests("/.well-known/openid-configuration")
    verifier = OidcVerifier(provider.issuer, AUDIENCE, clock=clock)
    assert provider.requests("/.well-known/openid-configuration") == before
    verifier.verify(provider.token())
    assert provider.requests("/.well-known/openid-configuration") == before + 1


# Times, with the leeway (60 s) and the injected clock.

def test_an_expired_token_is_refused_past_the_leeway(provider: OidcProvider, verifier: OidcVerifier,
                                                     clock: Clock) -> None:
    assert "expired" in refused(verifier, provider.token(expires_in=-120))
    assert verifier.verify(provider.token(expires_in=-30)).subject == "alice"
    token = provider.token(expires_in=600)
    clock.advance(600 + 59)
    assert verifier.verify(token).subject == "alice"
    clock.advance(2)
    assert "expired" in refused(verifier, token)


def test_a_token_needs_an_expiry(provider: OidcProvider, verifier: OidcVerifier) -> None:
    assert "no exp claim" in refused(verifier, provider.token(remove=["exp"]))


def test_a_token_not_yet_valid_is_refused_past_the_leeway(provider: OidcProvider, verifier: OidcVerifier,
                                                          clock: Clock) -> None:
    now = int(clock.now)
    assert "not yet valid (nbf" in refused(verifier, provider.token(claims={"nbf": now + 600}))
    assert "not yet valid (iat" in refused(verifier, provider.token(claims={"iat": now + 600}))
    assert verifier.verify(provider.token(claims={"nbf": now + 30, "iat": now + 30})).subject == "alice"
    later = provider.token(claims={"nbf": now + 600})
    clock.advance(600 - 60)
    assert verifier.verify(later).subject == "alice"


# Audience and issuer.

@pytest.mark.parametrize("aud", ["other-app", ["other-app", "another"], None])
def test_a_token_for_another_audience_is_refused(provider: OidcProvider, verifier: OidcVerifier,
                                                 aud: Any) -> None:
    assert "wrong audience" in refused(verifier, provider.token(aud=aud))


def test_a_token_from_another_provider_is_refused(verifier: OidcVerifier) -> None:
    with running_provider() as other:
        token = other.token()
        assert "wrong issuer" in refused(verifier, token)
        # The same token with our issuer's name, but the other provider's signature.
        forged = other.token(claims={"iss": verifier.issuer})
        assert "unknown key" in refused(verifier, forged)


def test_a_token_naming_another_issuer_signed_by_ours_is_refused(provider: OidcProvider,
                                                                 verifier: OidcVerifier) -> None:
    assert "wrong issuer" in refused(verifier, provider.token(claims={"iss": "https://idp.example.com"}))
    assert "wrong issuer" in refused(verifier, provider.token(claims={"iss": verifier.issuer + "/"}))


def test_a_provider_whose_discovery_names_another_issuer_is_not_used() -> None:
    port = free_port()
    with running_provider(port=port, advertised_issuer=f"http://127.0.0.1:{port}/elsewhere") as provider:
        verifier = OidcVerifier(provider.url, AUDIENCE)
        with pytest.raises(BackendUnavailable) as caught:
            verifier.verify(provider.token(claims={"iss": provider.url}))
        assert provider.url in caught.value.message and "names issuer" in caught.value.message
        assert provider.requests("/jwks") == 0


# Signatures and algorithms.

def test_an_unsigned_alg_none_token_is_refused(provider: OidcProvider, verifier: OidcVerifier) -> None:
    header, payload, _ = provider.token(sub="mallory").split(".")
    unsigned_header = {**unb64(header), "alg": "none"}
    token = f"{b64(json.dumps(unsigned_header).encode())}.{payload}."
    assert "unsupported algorithm 'none'" in refused(verifier, token)


def test_hs256_signed_with_the_public_key_is_refused(provider: OidcProvider, verifier: OidcVerifier) -> None:
    provider.rotate("RS256")
    genuine = provider.token(sub="mallory")
    header, payload, _ = genuine.split(".")
    verifier.verify(genuine)  # the key is known and cached: only the algorithm can stop the forgery
    with urllib.request.urlopen(f"{provider.url}/jwks", timeout=5) as answer:
        jwks = json.loads(answer.read())
    kid = unb64(header)["kid"]
    public = RSAAlgorithm.from_jwk(next(key for key in jwks["keys"] if key["kid"] == kid))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged_header = b64(json.dumps({**unb64(header), "alg": "HS256"}).encode())
    signature = hmac.new(pem, f"{forged_header}.{payload}".encode(), hashlib.sha256).digest()
    assert "unsupported algorithm 'HS256'" in refused(verifier, f"{forged_header}.{payload}.{b64(signature)}")


def test_a_tampered_payload_is_refused(provider: OidcProvider, verifier: OidcVerifier) -> None:
    header, payload, signature = provider.token(sub="mallory", groups=["viewers"]).split(".")
    assert verifier.verify(f"{header}.{payload}.{signature}").subject == "mallory"
    tampered = b64(json.dumps({**unb64(payload), "sub": "admin", "groups": ["maas-admins"]}).encode())
    assert "bad signature" in refused(verifier, f"{header}.{tampered}.{signature}")


def test_a_token_whose_alg_does_not_fit_its_key_is_refused(provider: OidcProvider,
                                                           verifier: OidcVerifier) -> None:
    provider.rotate("RS256")
    header, payload, signature = provider.token().split(".")
    for alg in ("ES256", "PS256"):
        other = b64(json.dumps({**unb64(header), "alg": alg}).encode())
        assert "differs from its key's" in refused(verifier, f"{other}.{payload}.{signature}")


def test_a_short_rsa_key_is_not_trusted(provider: OidcProvider, verifier: OidcVerifier,
                                        clock: Clock) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    # Published by the provider, which refuses to sign with it (jose): the token is signed here.
    provider.rotate(jwk={**json.loads(RSAAlgorithm.to_jwk(weak)), "alg": "RS256", "kid": "weak-1024"})
    provider.rotate("RS256")
    claims = {"iss": verifier.issuer, "aud": AUDIENCE, "sub": "w", "exp": clock.now + 60}
    unsigned = _unsigned({"alg": "RS256", "kid": "weak-1024"}, claims, signature="")
    signature = weak.sign(unsigned[:-1].encode(), padding.PKCS1v15(), hashes.SHA256())
    assert "shorter than 2048 bits" in refused(verifier, unsigned + b64(signature))
    assert verifier.verify(provider.token()).subject == "alice"


def test_a_token_signed_by_a_key_not_in_the_jwks_is_refused(provider: OidcProvider,
                                                            verifier: OidcVerifier) -> None:
    assert "unknown key" in refused(verifier, provider.token(unpublished_key=True))
    # The same unpublished key under the kid of a published one: the signature gives it away.
    published_kid = unb64(provider.token().split(".")[0])["kid"]
    token = provider.token(unpublished_key=True, header={"kid": published_kid})
    assert "bad signature" in refused(verifier, token)


@pytest.fixture
def offline(clock: Clock) -> OidcVerifier:
    """A verifier whose provider is nowhere: a refusal from it was reached without the network."""
    return OidcVerifier(f"http://127.0.0.1:{free_port()}", AUDIENCE, clock=clock)


MALFORMED: dict[str, Any] = {
    "empty": lambda iss: "",
    "no dots": lambda iss: "not-a-token",
    "not base64 JSON": lambda iss: "abc.def.ghi",
    "two segments": lambda iss: _unsigned({"alg": "RS256"}, {"iss": iss}).rsplit(".", 1)[0],
    "four segments": lambda iss: _unsigned({"alg": "RS256"}, {"iss": iss}) + ".c2ln",
    "an admin key": lambda iss: "maas_admin_" + "x" * 40,
    "header without alg": lambda iss: _unsigned({"typ": "JWT"}, {"iss": iss}),
    "payload not an object": lambda iss: _unsigned({"alg": "RS256"}, [iss]),
    "kid not a string": lambda iss: _unsigned({"alg": "RS256", "kid": 7}, {"iss": iss}),
    "too long": lambda iss: _unsigned({"alg": "RS256"}, {"iss": iss, "pad": "A" * 20000}),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_tokens_are_refused_without_the_network(offline: OidcVerifier, case: str) -> None:
    assert "malformed" in refused(offline, MALFORMED[case](offline.issuer))


def test_unsupported_algorithms_and_other_issuers_are_refused_without_the_network(offline: OidcVerifier) -> None:
    ours = {"iss": offline.issuer}
    assert "unsupported algorithm 'HS512'" in refused(offline, _unsigned({"alg": "HS512"}, ours))
    assert "unsupported algorithm 'ES256K'" in refused(offline, _unsigned({"alg": "ES256K"}, ours))
    assert refused(offline, _unsigned({"alg": "x" * 40}, {"iss": offline.issuer})).endswith(
        "unsupported algorithm (asymmetric signatures only)")
    assert "wrong issuer" in refused(offline, _unsigned({"alg": "RS256"}, {"iss": "https://idp.example.com"}))
    assert "wrong issuer" in refused(offline, _unsigned({"alg": "RS256"}, {}))


def test_looks_like_jwt_tells_a_jwt_from_keys(provider: OidcProvider) -> None:
    assert looks_like_jwt(provider.token())
    assert looks_like_jwt(b64(b'{"alg":"none"}') + "." + b64(b"{}") + ".")
    for other in ("maas_admin_" + "x" * 40, "sk-" + "y" * 48, "a.b.c", b64(b'{"typ":"JWT"}') + ".e30.c2ln",
                  b64(b"[]") + ".e30.c2ln", "", "é.é.é"):
        assert not looks_like_jwt(other), other


# Claims that make the identity.

@pytest.mark.parametrize("sub", [None, "", "   "])
def test_a_token_without_a_user_id_is_refused(provider: OidcProvider, verifier: OidcVerifier,
                                              sub: str | None) -> None:
    assert "claim 'sub' (the user id)" in refused(verifier, provider.token(sub=sub))


def test_a_user_claim_that_is_not_a_string_is_refused(provider: OidcProvider, clock: Clock) -> None:
    verifier = OidcVerifier(provider.issuer, AUDIENCE, user_claim="uid", clock=clock)
    assert "claim 'uid'" in refused(verifier, provider.token(claims={"uid": 1234}))


@pytest.mark.parametrize("groups", ["maas-admins", [1, 2], [["nested"]], {"a": 1}])
def test_groups_must_be_a_list_of_strings(provider: OidcProvider, verifier: OidcVerifier,
                                          groups: Any) -> None:
    token = provider.token(claims={"groups": groups})
    assert "claim 'groups' is not a list of strings" in refused(verifier, token)


def test_an_email_that_is_not_a_string_is_refused(provider: OidcProvider, verifier: OidcVerifier) -> None:
    assert "claim 'email' is not a string" in refused(verifier, provider.token(claims={"email": ["a@b.c"]}))


# Keys: rotation, the refresh rate limit, the cache's age.

def test_a_rotated_key_is_accepted_after_one_refresh(provider: OidcProvider, verifier: OidcVerifier) -> None:
    verifier.verify(provider.token())
    fetched = provider.requests("/jwks")
    new_kid = provider.rotate()
    token = provider.token(sub="after-rotation")
    assert unb64(token.split(".")[0])["kid"] == new_kid
    assert verifier.verify(token).subject == "after-rotation"
    assert provider.requests("/jwks") == fetched + 1
    verifier.verify(provider.token())
    assert provider.requests("/jwks") == fetched + 1


def test_a_flood_of_unknown_kids_refreshes_the_keys_once(provider: OidcProvider, verifier: OidcVerifier,
                                                         clock: Clock) -> None:
    verifier.verify(provider.token())
    fetched = provider.requests("/jwks")
    flood = [provider.token(unpublished_key=True, header={"kid": secrets.token_hex(8)}) for _ in range(50)]

    def attempt(token: str) -> str:
        with pytest.raises(Unauthorized) as caught:
            verifier.verify(token)
        return caught.value.message

    with ThreadPoolExecutor(max_workers=8) as pool:
        messages = list(pool.map(attempt, flood))
    assert all("unknown key" in message for message in messages)
    assert provider.requests("/jwks") == fetched + 1
    # A rotation within the refresh interval waits for it to pass; then one refresh finds the key.
    provider.rotate()
    rotated = provider.token(sub="patient")
    assert "unknown key" in refused(verifier, rotated)
    assert provider.requests("/jwks") == fetched + 1
    clock.advance(31)
    assert verifier.verify(rotated).subject == "patient"
    assert provider.requests("/jwks") == fetched + 2


def test_the_keys_are_fetched_again_after_an_hour(provider: OidcProvider, verifier: OidcVerifier,
                                                  clock: Clock) -> None:
    token = provider.token(expires_in=7200)
    verifier.verify(token)
    fetched = provider.requests("/jwks")
    clock.advance(3599)
    verifier.verify(token)
    assert provider.requests("/jwks") == fetched
    clock.advance(2)
    verifier.verify(token)
    assert provider.requests("/jwks") == fetched + 1


def test_threads_starting_at_once_fetch_discovery_and_keys_once(provider: OidcProvider,
                                                                clock: Clock) -> None:
    verifier = OidcVerifier(provider.issuer, AUDIENCE, clock=clock)
    tokens = [provider.token(sub=f"user-{n}") for n in range(8)]
    discovered, fetched = provider.requests("/.well-known/openid-configuration"), provider.requests("/jwks")
    start = threading.Barrier(8)

    def verify(token: str) -> str:
        start.wait(timeout=5)
        return verifier.verify(token).subject

    with ThreadPoolExecutor(max_workers=8) as pool:
        subjects = list(pool.map(verify, tokens))
    assert subjects == [f"user-{n}" for n in range(8)]
    assert provider.requests("/.well-known/openid-configuration") == discovered + 1
    assert provider.requests("/jwks") == fetched + 1


# A provider that is down, slow, or behind a private CA.

def test_a_provider_that_is_down_is_backend_unavailable_naming_it(clock: Clock) -> None:
    with running_provider() as provider:
        token = provider.token(expires_in=7200)
        warm = OidcVerifier(provider.issuer, AUDIENCE, clock=clock)
        warm.verify(token)
    cold = OidcVerifier(provider.issuer, AUDIENCE, clock=clock)
    with pytest.raises(BackendUnavailable) as caught:
        cold.verify(token)
    assert provider.issuer in caught.value.message and "cannot be reached" in caught.value.message
    # Keys already fetched still serve, even past their age while the provider stays away.
    assert warm.verify(token).subject == "alice"
    clock.advance(3601)
    assert warm.verify(token).subject == "alice"


class SilentServer:
    """Accepts connections and never answers: a provider that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(connection)

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_a_hanging_provider_times_out_then_is_not_asked_again_for_a_while(silent_server: SilentServer,
                                                                          clock: Clock) -> None:
    issuer = f"http://127.0.0.1:{silent_server.port}"
    verifier = OidcVerifier(issuer, AUDIENCE, clock=clock, timeout_s=0.3)
    token = _unsigned({"alg": "RS256", "kid": "k"}, {"iss": issuer})
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        verifier.verify(token)
    assert time.monotonic() - started < 3
    assert issuer in caught.value.message and "timed out" in caught.value.message
    assert eventually(lambda: silent_server.accepted == 1)
    with pytest.raises(BackendUnavailable):
        verifier.verify(token)  # within the pause after a failure: not asked
    clock.advance(6)
    with pytest.raises(BackendUnavailable):
        verifier.verify(token)
    assert eventually(lambda: silent_server.accepted == 2)
    assert silent_server.accepted == 2


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test OIDC provider")])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_an_https_provider_with_a_private_ca_needs_the_ca_file(tmp_path: Path) -> None:
    key_path, cert_path = _self_signed(tmp_path)
    with running_provider(tls=(key_path, cert_path)) as provider:
        assert provider.issuer.startswith("https://")
        token = provider.token(sub="tls-user")
        assert OidcVerifier(provider.issuer, AUDIENCE, ca_file=cert_path).verify(token).subject == "tls-user"
        with pytest.raises(BackendUnavailable) as caught:
            OidcVerifier(provider.issuer, AUDIENCE).verify(token)
        assert "certificate verify failed" in caught.value.message


# The authorization-code flow with PKCE, as a browser console will drive it.

class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _authorize(provider: OidcProvider, **params: str) -> dict[str, str]:
    query = urllib.parse.urlencode({"response_type": "code", "client_id": AUDIENCE, "scope": "openid",
                                    "redirect_uri": "http://127.0.0.1:1/callback", "state": "s1", **params})
    opener = urllib.request.build_opener(_NoRedirects)
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(f"{provider.url}/authorize?{query}", timeout=5)
    assert caught.value.code == 302
    location = urllib.parse.urlsplit(caught.value.headers["Location"])
    return dict(urllib.parse.parse_qsl(location.query))


def _exchange(provider: OidcProvider, **fields: str) -> tuple[int, dict[str, Any]]:
    body = urllib.parse.urlencode({"grant_type": "authorization_code", "client_id": AUDIENCE,
                                   "redirect_uri": "http://127.0.0.1:1/callback", **fields}).encode()
    try:
        with urllib.request.urlopen(f"{provider.url}/token", data=body, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_authorization_code_flow_with_pkce_signs_in() -> None:
    with running_provider() as provider:
        provider.login_as(sub="dave", email="dave@example.com", groups=["team-b"])
        code_verifier = secrets.token_urlsafe(48)
        challenge = b64(hashlib.sha256(code_verifier.encode()).digest())
        answer = _authorize(provider, code_challenge=challenge, code_challenge_method="S256")
        assert answer["state"] == "s1"
        status, tokens = _exchange(provider, code=answer["code"], code_verifier=code_verifier)
        assert status == 200, tokens
        own = OidcVerifier(provider.issuer, AUDIENCE)
        for token in (tokens["id_token"], tokens["access_token"]):
            assert own.verify(token) == Identity(subject="dave", method="oidc", email="dave@example.com",
                                                 groups=("team-b",), issuer=provider.issuer)
        assert _exchange(provider, code=answer["code"], code_verifier=code_verifier)[0] == 400  # single use

        wrong = _authorize(provider, code_challenge=challenge, code_challenge_method="S256")
        assert _exchange(provider, code=wrong["code"], code_verifier=secrets.token_urlsafe(48))[0] == 400
        missing = _authorize(provider, code_challenge=challenge, code_challenge_method="S256")
        assert _exchange(provider, code=missing["code"])[0] == 400
        assert _authorize(provider)["error"] == "invalid_request"  # no PKCE, no code
        assert _exchange(provider, code="made-up", code_verifier=code_verifier)[0] == 400


# Configuration.

def test_a_plain_http_issuer_must_be_on_loopback() -> None:
    for issuer in ("http://idp.example.com", "ftp://idp.example.com", "idp.example.com", "https://x/?a=1"):
        with pytest.raises(ValueError, match="OIDC issuer"):
            OidcVerifier(issuer, AUDIENCE)
    for issuer in ("https://idp.example.com/realms/maas", "http://127.0.0.1:5556", "http://localhost:8080",
                   "http://[::1]:9000"):
        assert OidcVerifier(issuer, AUDIENCE).issuer == issuer


def test_settings_make_the_verifier(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert verifier_from_settings(Settings()) is None
    _, ca_file = _self_signed(tmp_path)
    monkeypatch.setenv("MAAS_OIDC_ISSUER", "https://idp.example.com/realms/maas")
    monkeypatch.setenv("MAAS_OIDC_AUDIENCE", "maas-console")
    monkeypatch.setenv("MAAS_OIDC_USER_CLAIM", "preferred_username")
    monkeypatch.setenv("MAAS_OIDC_GROUPS_CLAIM", "roles")
    monkeypatch.setenv("MAAS_OIDC_CA_FILE", str(ca_file))
    verifier = verifier_from_settings(load_settings())
    assert verifier is not None
    made = (verifier.issuer, verifier.audience, verifier.user_claim, verifier.email_claim, verifier.groups_claim)
    assert made == ("https://idp.example.com/realms/maas", "maas-console", "preferred_username", "email", "roles")


@pytest.mark.parametrize(("env", "named"), [
    ({"MAAS_OIDC_ISSUER": "https://idp.example.com"}, "MAAS_OIDC_AUDIENCE"),
    ({"MAAS_OIDC_ISSUER": "http://idp.example.com", "MAAS_OIDC_AUDIENCE": "maas"}, "https"),
    ({"MAAS_OIDC_ISSUER": "https://idp.example.com", "MAAS_OIDC_AUDIENCE": "maas", "MAAS_OIDC_USER_CLAIM": ""},
     "MAAS_OIDC_USER_CLAIM"),
])
def test_unusable_oidc_settings_are_a_configuration_error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                          named: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=named):
        load_settings()


def test_empty_oidc_settings_mean_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAAS_OIDC_ISSUER", "MAAS_OIDC_AUDIENCE", "MAAS_OIDC_CA_FILE"):
        monkeypatch.setenv(name, "")
    assert verifier_from_settings(load_settings()) is None


def test_without_node_the_harness_fails_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.oidc_provider as harness

    monkeypatch.setattr(harness, "installed", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="node is not installed"):
        harness.node_binary()
