"""The trusted-issuer registry: accepted shapes, defaults, refusals naming file and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from service.errors import CDSError
from service.security import ConfigurationError, IssuerConfig, IssuerRegistry

# The CDS Hooks Sandbox's published public key (docs/security.md): local testing only.
SANDBOX_JWKS = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f",
            "x": "dw_JGR8nB2I6XveNxUOl2qk699ZPLM2nYI5STSdiEl9avAkrm3CkfYMbrrjr8laB",
            "y": "Sm3mLE-n1zYNla_aiE3cb3nZsL51RbC7ysw3q8aJLxGm-hx79RPMYpITDjp7kgzy",
            "alg": "ES384",
        }
    ]
}


@pytest.fixture(scope="session")
def jwks() -> dict[str, Any]:
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    return {"keys": [{**json.loads(ECAlgorithm.to_jwk(public)), "kid": "k1"}]}


def issuer(keys: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"iss": "https://ehr.example.com", "jwks": keys, **fields}


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    text = json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["issuers.yaml", "issuers.yml", "issuers.json"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_loads_yaml_or_json_list_or_mapping(
    tmp_path: Path, jwks: dict[str, Any], name: str, wrapped: bool
) -> None:
    entries = [
        issuer(jwks, fhir_servers=["https://fhir.example.com/r4/"]),
        {
            "iss": "https://epic.example.org",
            "jwks_url": "https://epic.example.org/jwks",
            "allowed_jku": ["https://epic.example.org/jwks2"],
            "algorithms": ["RS384"],
            "tenants": ["t1"],
            "audience": "https://cds.example.org/cds-services",
        },
    ]
    registry = IssuerRegistry.load(
        write(tmp_path, name, {"issuers": entries} if wrapped else entries)
    )
    assert len(registry) == 2
    first = registry.get("https://ehr.example.com")
    assert first is not None
    assert first.algorithms == ["ES384", "RS384"]  # default
    assert first.fhir_servers == ["https://fhir.example.com/r4"]
    assert first.inline_keys is not None and first.inline_keys.get("k1") is not None
    second = registry.get("https://epic.example.org")
    assert second is not None and second.inline_keys is None
    assert second.jku_allowed("https://epic.example.org/jwks2")
    assert second.jku_allowed("https://epic.example.org/jwks")  # jwks_url counts as allowed
    assert not second.jku_allowed("https://epic.example.org/other")
    assert registry.get("https://ehr.example.com/") is None  # iss is compared exactly


def test_sandbox_jwks_entry_from_the_docs_loads() -> None:
    registry = IssuerRegistry.from_data(
        [
            {
                "iss": "https://sandbox.cds-hooks.org",
                "jwks": SANDBOX_JWKS,
                "allowed_jku": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"],
                "algorithms": ["ES384"],
                "fhir_servers": ["http://127.0.0.1:8090/fhir"],
            }
        ]
    )
    sandbox = registry.get("https://sandbox.cds-hooks.org")
    assert sandbox is not None and sandbox.inline_keys is not None
    key = sandbox.inline_keys.get("44823f3d-0b01-4a6c-a80e-b9d3e8a7226f")
    assert key is not None and key.usable_with("ES384")


def test_fhir_server_comparison_ignores_trailing_slash_and_host_case(jwks: dict[str, Any]) -> None:
    config = IssuerConfig.model_validate(
        issuer(jwks, fhir_servers=["https://FHIR.example.com/r4/"])
    )
    assert config.fhir_server_allowed("https://fhir.example.com/r4")
    assert config.fhir_server_allowed("https://fhir.example.com/r4/")
    assert not config.fhir_server_allowed("https://fhir.example.com/R4")
    assert not config.fhir_server_allowed("https://fhir.example.com/r4/../admin")
    assert not config.fhir_server_allowed("https://fhir.example.com.evil.net/r4")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"jwks_url": "https://x.example/jwks"}, "issuers[0]", "exactly one of"),
        ({"jwks": None}, "issuers[0]", "exactly one of"),
        ({"algorithms": ["HS256"]}, "issuers[0].algorithms[0]", "Input should be"),
        ({"algorithms": ["none"]}, "issuers[0].algorithms[0]", "Input should be"),
        ({"algorithms": []}, "issuers[0].algorithms", "at least 1"),
        ({"algorithms": ["RS384"]}, "issuers[0]", "no key can verify"),
        ({"surprise": 1}, "issuers[0].surprise", "Extra inputs"),
        ({"jwks": None, "jwks_url": "http://ehr.example.com/jwks"}, "issuers[0].jwks_url", "https"),
        ({"allowed_jku": ["http://169.254.169.254/"]}, "issuers[0].allowed_jku", "https"),
        ({"allowed_jku": ["https://u:p@x.example/"]}, "issuers[0].allowed_jku", "credentials"),
        ({"fhir_servers": ["ftp://fhir.example.com"]}, "issuers[0].fhir_servers", "https"),
        ({"tenants": []}, "issuers[0].tenants", "at least 1"),
        ({"iss": ""}, "issuers[0].iss", "at least 1"),
        ({"jwks": {"keys": []}}, "issuers[0]", "no keys"),
    ],
)
def test_bad_entries_name_the_file_and_field(
    tmp_path: Path, jwks: dict[str, Any], change: dict[str, Any], field: str, message: str
) -> None:
    path = write(tmp_path, "issuers.yaml", [issuer(jwks, **change)])
    with pytest.raises(ConfigurationError) as caught:
        IssuerRegistry.load(path)
    assert str(path) in caught.value.message
    assert f"{field}:" in caught.value.message or f"{field}" in caught.value.message
    assert message in caught.value.message
    assert isinstance(caught.value, CDSError)


def test_private_key_in_registry_is_refused(tmp_path: Path, jwks: dict[str, Any]) -> None:
    private_jwks = {"keys": [{**jwks["keys"][0], "d": "c2VjcmV0"}]}
    with pytest.raises(ConfigurationError, match=r"jwks: keys\[0\]: .*private"):
        IssuerRegistry.load(write(tmp_path, "i.yaml", [issuer(private_jwks)]))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "top level must be"),
        ("issuers: [\n", "not valid YAML/JSON"),
        ("just text", "top level must be"),
        ("issuers: []", "at least 1"),
        ("{issuers: [], extra: 1}", "extra: Extra inputs"),
    ],
)
def test_bad_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "issuers.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=message) as caught:
        IssuerRegistry.load(path)
    assert str(path) in caught.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        IssuerRegistry.load(tmp_path / "absent.yaml")


def test_duplicate_iss(tmp_path: Path, jwks: dict[str, Any]) -> None:
    path = write(tmp_path, "i.json", [issuer(jwks), issuer(jwks)])
    with pytest.raises(ConfigurationError, match="listed twice"):
        IssuerRegistry.load(path)
