"""A small local OIDC issuer for the tests: RSA, EC P-256 and Ed25519 signing keys, a JWKS
served over HTTPS (a certificate from a throw-away test CA, made with `openssl` as in
test_tls.py), signed tokens (PyJWT), forged ones (`alg: none`, HMAC keyed with the public
key), and key rotation while it runs. Nothing here is credstore: it stands where an IdP would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from test_tls import make_ca, make_leaf

ISSUER = "https://issuer.test"
AUDIENCE = "credstore"

ALGORITHMS = {"rsa": "RS256", "ec": "ES256", "ed": "EdDSA"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Issuer:
    """Keys, a JWKS over HTTPS on 127.0.0.1 (`localhost` in its certificate), and tokens."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        make_ca(workdir, "issuer-ca")
        make_leaf(workdir, "issuer-ca", "issuer", "serverAuth")
        self.ca_pem = workdir / "issuer-ca.pem"
        self.keys: Dict[str, Any] = {}
        self.published: List[str] = []
        self.fetches = 0
        for kid in ("rsa-1", "ec-1", "ed-1"):
            self.add_key(kid)
        self._lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                body = json.dumps(issuer.jwks()).encode()
                with issuer._lock:
                    issuer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(workdir / "issuer.pem"), str(workdir / "issuer.key"))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.jwks_uri = f"https://localhost:{self.port}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- keys ------------------------------------------------------------------------

    def add_key(self, kid: str, publish: bool = True) -> None:
        kind = kid.split("-")[0]
        if kind == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "ec":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        self.keys[kid] = key
        if publish:
            self.published.append(kid)

    def withdraw(self, kid: str) -> None:
        self.published.remove(kid)

    def jwks(self) -> Dict[str, Any]:
        keys = []
        for kid in self.published:
            algorithm = ALGORITHMS[kid.split("-")[0]]
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[algorithm].to_jwk(
                self.keys[kid].public_key()))
            jwk.update({"kid": kid, "use": "sig", "alg": algorithm})
            keys.append(jwk)
        return {"keys": keys}

    def public_pem(self, kid: str) -> bytes:
        return self.keys[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    # ---- tokens ----------------------------------------------------------------------

    def claims(self, sub: str = "alice", groups: Optional[List[str]] = None,
               **overrides: Any) -> Dict[str, Any]:
        now = int(time.time())
        claims: Dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "groups": groups if groups is not None else [],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str = "rsa-1", sign_with: Optional[str] = None,
              **claims: Any) -> str:
        """A token naming `kid`, signed with `sign_with`'s key (default: kid's own)."""
        algorithm = ALGORITHMS[kid.split("-")[0]]
        key = self.keys[sign_with or kid]
        return jwt.encode(self.claims(**claims), key, algorithm=algorithm,
                          headers={"kid": kid})

    def unsigned(self, **claims: Any) -> str:
        """`alg: none`, no signature."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(self.claims(**claims)).encode())
        return f"{header}.{payload}."

    def hmac_with_public_key(self, kid: str = "rsa-1", **claims: Any) -> str:
        """HS256 keyed with the issuer's public key (the algorithm-confusion attack)."""
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        payload = _b64(json.dumps(self.claims(**claims)).encode())
        signing_input = f"{header}.{payload}".encode()
        signature = hmac.new(self.public_pem(kid), signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"
