"""``gatekeeper token`` and ``mint``: tokens the middleware accepts, claims as the CLI describes them."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pytest

from gatekeeper.jwt.auth import JWTAuth
from gatekeeper.jwt.jws import parse_compact
from gatekeeper.jwt.mint import mint, new_key_pem, parse_claim, parse_duration, public_key_pem, register, run

SECRET = "mysuperlongsecret"


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gatekeeper")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["token", *argv])


@pytest.mark.parametrize("text, claim", [
    ("grp=admin", (["grp"], "admin")),
    ("n=42", (["n"], 42)),
    ("active=true", (["active"], True)),
    ("areas=[\"home\",\"office\"]", (["areas"], ["home", "office"])),
    ("user.name=John Snow", (["user", "name"], "John Snow")),
    ("eq=a=b", (["eq"], "a=b")),
    ("empty=", (["empty"], "")),
])
def test_parse_claim(text, claim):
    assert parse_claim(text) == claim


@pytest.mark.parametrize("text, seconds", [("90", 90), ("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_cli_secret_token(capsys):
    args = cli("--secret", SECRET, "--claim", "grp=admin", "--claim", "user.name=John Snow", "--claim",
               "user.age=40", "--exp", "1h", "--kid", "k1", "--iss", "https://idp", "--aud", "api")
    before = int(time.time())
    assert args.func(args) == 0
    token = capsys.readouterr().out.strip()
    parsed = parse_compact(token)
    assert parsed.header == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    payload = parsed.payload
    assert payload["grp"] == "admin" and payload["user"] == {"name": "John Snow", "age": "40"}
    assert (payload["iss"], payload["aud"]) == ("https://idp", "api")
    assert before + 3600 <= int(payload["exp"]) <= int(time.time()) + 3600
    auth = JWTAuth.from_config({"signingSecret": SECRET, "claims": "Equals(`user.name`, `John Snow`)"})
    assert auth.verify(token)["grp"] == "admin"


@pytest.mark.parametrize("kind, alg, want_alg", [
    ("rsa", None, "RS256"), ("rsa", "PS384", "PS384"), ("ec256", None, "ES256"), ("ec384", None, "ES384"),
    ("ec521", None, "ES512"), ("ed25519", None, "EdDSA"),
])
def test_cli_key_tokens_verify(tmp_path, capsys, kind, alg, want_alg):
    pem = new_key_pem(kind)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem)
    args = cli("--key", str(key_file), *(["--alg", alg] if alg else []), "--claim", "sub=alice")
    assert run(args) == 0
    token = capsys.readouterr().out.strip()
    assert parse_compact(token).alg == want_alg
    assert JWTAuth.from_config({"publicKey": public_key_pem(pem)}).verify(token)["sub"] == "alice"


@pytest.mark.parametrize("argv, message", [
    (["--key", "/nonexistent.pem"], "cannot read key"),
    (["--secret", "s", "--exp", "soon"], "not a duration"),
    (["--secret", "s", "--claim", "novalue"], "--claim expects NAME=VALUE"),
    (["--secret", "s", "--alg", "RS256"], "RS256 needs a private key"),
], ids=["missing-key", "bad-exp", "bad-claim", "alg-needs-key"])
def test_cli_errors_are_one_line(capsys, argv, message):
    assert run(cli(*argv)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_gatekeeper_token_command():
    done = subprocess.run([sys.executable, "-m", "gatekeeper", "token", "--secret", SECRET, "--claim", "grp=admin"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert JWTAuth.from_config({"signingSecret": SECRET}).verify(done.stdout.strip())["grp"] == "admin"


def test_mint_is_literal():
    token = mint({"a": 1}, secret=SECRET, alg="HS512", kid="x", headers={"typ": "at+jwt"})
    parsed = parse_compact(token)
    assert parsed.header == {"alg": "HS512", "typ": "at+jwt", "kid": "x"} and parsed.payload == {"a": "1"}
    with pytest.raises(ValueError):
        mint({}, secret=SECRET, key_pem=new_key_pem("ec256"))
