"""The registry allow-list: hostile checkpoint URIs are refused, allowed ones pass."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from libs.common.registry_allow import (
    AllowList,
    FileSource,
    HttpSource,
    Resolver,
    SourceRefused,
    blocked_kind,
    parse_source,
)

pytestmark = pytest.mark.unit

ALLOW = AllowList.parse(
    [
        "/srv/models",
        "https://hub.example.com/models/",
        "http://10.0.0.5:8080/ckpt",
        "http://127.0.0.1:9000/reg/",
        "http://localhost:9100/",
    ]
)


@pytest.mark.parametrize(
    "uri",
    [
        "file:///srv/models/llama",
        "file:///srv/models/my%20model/",
        "file://localhost/srv/models/x",
        "file:///srv/models",
        "https://hub.example.com/models/llama-3/",
        "https://HUB.Example.com./models/llama",  # case and the root dot do not matter
        "https://hub.example.com:443/models/a",
        "https://hub.example.com/models/%6c%6c%61%6d%61",  # encoded letters are letters
        "http://10.0.0.5:8080/ckpt/m",
        "http://127.0.0.1:9000/reg/tiny",  # loopback, but its entry names the address
    ],
)
def test_allowed_uris_pass(uri: str) -> None:
    assert ALLOW.check(uri).uri == uri


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("file:///etc/passwd", "outside the registry directories"),
        ("file:///proc/self/environ", "never a registry source"),
        ("file:///srv/models/../../etc/passwd", "'..'"),
        ("file:///srv/models/./x", "'.'"),
        ("file:///srv/models/%2e%2e/%2e%2e/etc/shadow", "'..'"),
        ("file:///srv/models%2f..%2f..%2fetc", "'..'"),
        ("file:///srv/models/%ff", "UTF-8"),
        ("file:///srv/models/x%00y", "absolute path"),
        ("file:///srv/modelsX/evil", "outside"),  # a sibling that shares the prefix
        ("file://evil.example/srv/models/x", "local path"),
        ("file:srv/models/x", "absolute"),
        ("/srv/models/plain-path", "unsupported scheme"),
        ("s3://bucket/model", "unsupported scheme"),
        ("gopher://127.0.0.1:6379/_INFO", "unsupported scheme"),
        ("http://127.0.0.1:6379/", "not under an allowed registry URL"),
        ("http://127.0.0.1:9000/other/", "not under"),
        ("http://169.254.169.254/latest/meta-data/", "not under"),
        ("http://[fd00:ec2::254]/latest/", "not under"),
        ("http://[::1]:9000/reg/", "not under"),
        ("http://[::ffff:127.0.0.1]:9000/reg/", "not under"),
        ("http://[fe80::1%25eth0]/", "IPv6 host is malformed"),
        ("http://2130706433:9000/reg/", "four decimal numbers"),
        ("http://0x7f.1:9000/reg/", "four decimal numbers"),
        ("http://127.1:9000/reg/", "four decimal numbers"),
        ("http://hub.example.com/models/", "not under"),  # http, not https
        ("https://hub.example.com:8443/models/", "not under"),
        ("https://hub.example.com.evil.io/models/", "not under"),
        ("https://evil.io/hub.example.com/models/", "not under"),
        ("https://hub.example.com@evil.io/models/", "credentials"),
        ("https://evil.io#@hub.example.com/models/", "query or fragment"),
        ("https://hub.example.com/models/x?sig=1", "query or fragment"),
        ("https://hub.example.com/models/%2e%2e/admin", "'..'"),
        ("https://hub.example.com/models/..%2fadmin", "encoded '/'"),
        ("https://hub.example.com/models%2f..%2fadmin", "encoded '/'"),
        ("https://hub.example.com/models/%252e%252e/admin", "percent sign"),
        ("https://hub.example.com/models/a%5c..%5cb", "backslash"),
        ("https://hub.example.com/models//x", "empty segments"),
        ("https://hub.example.com/models/a b", "spaces"),
        ("https://hub.example.com/models/a\\b", "backslashes"),
        ("https://hüb.example.com/models/", "ASCII"),
        ("http://:9000/reg/", "no host"),
        ("http://127.0.0.1:0/reg/", "port"),
        ("http://127.0.0.1:99999/reg/", "port"),
        ("", "unsupported scheme"),
    ],
)
def test_hostile_uris_are_refused_with_a_reason(uri: str, why: str) -> None:
    with pytest.raises(SourceRefused) as info:
        ALLOW.check(uri)
    assert why in info.value.reason


def test_the_default_allows_only_the_models_folder_of_the_working_directory(
    tmp_path: Path,
) -> None:
    allow = AllowList.parse([".sllm/models"], cwd=tmp_path)
    assert allow.roots == (tmp_path / ".sllm" / "models",)
    assert allow.prefixes == ()
    assert isinstance(allow.check((tmp_path / ".sllm/models/demo").as_uri()), FileSource)
    for uri in ((tmp_path / "elsewhere").as_uri(), "https://hub.example.com/models/x"):
        with pytest.raises(SourceRefused):
            allow.check(uri)


@pytest.mark.parametrize(
    "entry", ["/srv/../etc", "ftp://x/", "http://u:p@h/", "http://h/a?x=1", "http://h:0/"]
)
def test_bad_entries_are_refused_when_parsed(entry: str) -> None:
    with pytest.raises(ValueError, match="registry allow-list entry"):
        AllowList.parse([entry])


def test_http_sources_keep_a_canonical_base_url() -> None:
    src = ALLOW.check("https://HUB.example.com:443/models/llama")
    assert isinstance(src, HttpSource)
    assert (src.host, src.port, src.base_url) == (
        "hub.example.com",
        443,
        "https://hub.example.com/models/llama/",
    )
    v6 = parse_source("http://[2001:DB8::1]:8080/m")
    assert isinstance(v6, HttpSource)
    assert v6.base_url == "http://[2001:db8::1]:8080/m/"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 around 169.254.169.254
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),  # Linux connects 0/8 to this host
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("fec0::1", "site-local"),
        ("8.8.8.8", None),
        ("10.1.2.3", None),  # a registry on the private network is normal
        ("2001:4860::8888", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_blocked_address_kinds(address: str, kind: str | None) -> None:
    assert blocked_kind(ipaddress.ip_address(address)) == kind


def _resolver(*addresses: str) -> Resolver:
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    "addresses",
    [
        ("127.0.0.1",),
        ("93.184.216.34", "127.0.0.1"),  # one bad address among good ones is enough
        ("::1",),
        ("::ffff:127.0.0.1",),
        ("169.254.169.254",),
        ("fd00:ec2::254",),
        ("fe80::1%eth0",),
        ("0.0.0.0",),
    ],
)
def test_a_name_that_resolves_to_a_blocked_address_is_refused(addresses: tuple[str]) -> None:
    src = ALLOW.check("https://hub.example.com/models/x")
    assert isinstance(src, HttpSource)
    with pytest.raises(SourceRefused, match="blocked address"):
        ALLOW.resolve(src, _resolver(*addresses))


def test_public_and_explicitly_named_addresses_resolve() -> None:
    src = ALLOW.check("https://hub.example.com/models/x")
    assert isinstance(src, HttpSource)
    assert ALLOW.resolve(src, _resolver("93.184.216.34", "10.0.0.7")) == [
        "93.184.216.34",
        "10.0.0.7",
    ]
    named = ALLOW.check("http://127.0.0.1:9000/reg/x")
    assert isinstance(named, HttpSource)
    assert ALLOW.resolve(named) == ["127.0.0.1"]
    local = ALLOW.check("http://localhost:9100/x")
    assert isinstance(local, HttpSource)
    assert ALLOW.resolve(local, _resolver("127.0.0.1", "::1")) == ["127.0.0.1", "::1"]
    # `localhost` vouches for loopback only, not for metadata.
    with pytest.raises(SourceRefused, match="cloud metadata"):
        ALLOW.resolve(local, _resolver("169.254.169.254"))


def test_a_name_with_no_address_is_refused() -> None:
    src = ALLOW.check("https://hub.example.com/models/x")
    assert isinstance(src, HttpSource)
    with pytest.raises(SourceRefused, match="no address"):
        ALLOW.resolve(src, _resolver())


def test_symlinks_may_not_lead_out_of_a_root(tmp_path: Path) -> None:
    real = tmp_path / "real-models"
    (real / "m").mkdir(parents=True)
    (real / "m" / "part-00000.bin").write_bytes(b"x")
    os.symlink(real, tmp_path / "models")  # the root itself may be a link
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", real / "m" / "leak.bin")
    os.symlink("/etc", real / "etc")
    os.symlink("/proc/self", real / "self")
    allow = AllowList.parse([str(tmp_path / "models")])
    allow.check_local(tmp_path / "models" / "m")
    allow.check_local(tmp_path / "models" / "m" / "part-00000.bin")
    allow.check_local(tmp_path / "models" / "not-yet-there")
    for path in (
        tmp_path / "models" / "m" / "leak.bin",
        tmp_path / "models" / "etc" / "passwd",
        tmp_path / "models" / "self" / "environ",
    ):
        assert isinstance(allow.check((path).as_uri()), FileSource)  # lexically inside
        with pytest.raises(SourceRefused, match="leads outside"):
            allow.check_local(path)


def test_proc_is_refused_even_under_an_allowed_root() -> None:
    allow = AllowList.parse(["/"])
    assert isinstance(allow.check("file:///srv/x"), FileSource)
    for uri in ("file:///proc/self/environ", "file:///sys/kernel", "file:///dev/zero"):
        with pytest.raises(SourceRefused, match="never"):
            allow.check(uri)
    with pytest.raises(SourceRefused, match="leads outside"):
        allow.check_local(Path("/proc/self/environ"))
