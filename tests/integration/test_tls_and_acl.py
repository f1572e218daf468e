"""TLS to NATS and Valkey, mutual TLS, and Valkey ACL users, against real servers: a service
started with only ``SLLM_*`` settings reaches both over TLS; a client without the right CA or
certificate gets a clear configuration error, not an outage; a service's Valkey user may use
the cluster's keys and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import trustme
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from libs.cli.credentials import Credentials
from libs.cluster import ClusterState
from libs.common.embedded import (
    EmbeddedNats,
    EmbeddedRedis,
)
from libs.common.redis_client import connect_redis
from libs.common.server_binaries import ServerBinaryError, redis_server_binary
from libs.common.server_config import ServerTls
from libs.common.settings import SettingsError
from libs.common.tls import TlsFiles, nats_tls
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import SERVICE_INFO
from libs.protocol.errors import CredentialsError
from libs.protocol.messages import DeploymentSpec, InfoRequest
from services.storage.app import StorageService
from services.storage.settings import StorageSettings

pytestmark = pytest.mark.integration

ROOT = "tlsacl"


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.dir = directory
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.ca.issue_cert("sllm-client@example.org")
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.server_cert = self._write("server.pem", server.cert_chain_pems[0].bytes())
        self.server_key = self._write("server.key", server.private_key_pem.bytes())
        self.client_cert = self._write("client.pem", client.cert_chain_pems[0].bytes())
        self.client_key = self._write("client.key", client.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def server(self, *, verify_clients: bool) -> ServerTls:
        return ServerTls(self.server_cert, self.server_key, self.ca_file, verify_clients)

    def client(self, what: str, *, cert: bool = True) -> TlsFiles:
        if not cert:
            return TlsFiles(what, ca=self.ca_file)
        return TlsFiles(what, self.ca_file, self.client_cert, self.client_key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_nats(pki: Pki) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tls=pki.server(verify_clients=True)) as server:
        assert isinstance(server, EmbeddedNats)
        yield server


def _tls_redis_binary() -> str:
    try:
        return redis_server_binary(tls=True)
    except ServerBinaryError as exc:
        pytest.skip(f"no TLS-capable valkey-server/redis-server here: {exc}")


@pytest.fixture(scope="module")
def tls_redis(pki: Pki) -> Iterator[EmbeddedRedis]:
    _tls_redis_binary()
    with EmbeddedRedis(tls=pki.server(verify_clients=True)) as server:
        assert isinstance(server, EmbeddedRedis)
        yield server


# --- TLS ---------------------------------------------------------------------------------


async def test_a_service_reaches_nats_and_valkey_over_mutual_tls_from_settings(
    pki: Pki, tls_nats: EmbeddedNats, tls_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    assert tls_nats.url.startswith("tls://")
    assert tls_redis.url.startswith("rediss://")
    settings = StorageSettings.from_env(
        {
            "SLLM_NATS_URL": tls_nats.url,
            "SLLM_REDIS_URL": tls_redis.url,
            "SLLM_ROOT": ROOT,
            "SLLM_NODE_ID": "node-tls",
            "SLLM_SSD_DIR": str(tmp_path / "ssd"),
            "SLLM_DRAM_DIR": str(tmp_path / "dram"),
            "SLLM_NATS_TLS_CA": pki.ca_file,
            "SLLM_NATS_TLS_CERT": pki.client_cert,
            "SLLM_NATS_TLS_KEY": pki.client_key,
            "SLLM_REDIS_TLS_CA": pki.ca_file,
            "SLLM_REDIS_TLS_CERT": pki.client_cert,
            "SLLM_REDIS_TLS_KEY": pki.client_key,
        }
    )
    svc = StorageService(settings)
    await svc.start()
    client = await Bus.connect(
        tls_nats.url, name="tls-client", root=ROOT, tls=nats_tls(pki.client("SLLM_NATS_TLS"))
    )
    try:
        info = await client.request(
            SERVICE_INFO, InfoRequest(), kind="storage", instance_id=svc.instance_id
        )
        assert info.node_id == "node-tls"
        redis = await connect_redis(tls_redis.url, tls=pki.client("SLLM_REDIS_TLS"))
        try:  # the service registered itself in Valkey, over TLS
            assert await redis.exists(Keys(ROOT).alive("storage", svc.instance_id))
        finally:
            await redis.aclose()
    finally:
        await client.close()
        await svc.stop("test")


async def test_nats_without_a_client_certificate_is_a_clear_configuration_error(
    pki: Pki, tls_nats: EmbeddedNats
) -> None:
    no_cert = nats_tls(pki.client("SLLM_NATS_TLS", cert=False))
    with pytest.raises(CredentialsError, match="TLS"):
        await Bus.connect(tls_nats.url, name="no-cert", root=ROOT, tls=no_cert, connect_timeout=3)


async def test_nats_with_an_unknown_ca_is_a_clear_configuration_error(
    tls_nats: EmbeddedNats,
) -> None:
    # The system's CAs did not sign this server's certificate.
    with pytest.raises(CredentialsError, match="TLS"):
        await Bus.connect(tls_nats.url, name="system-cas", root=ROOT, connect_timeout=3)


async def test_valkey_with_an_unknown_ca_is_a_clear_configuration_error(
    tls_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    other = Pki(tmp_path)  # a CA of its own: not the one that signed the server
    with pytest.raises(CredentialsError, match="TLS"):
        await connect_redis(tls_redis.url, tls=other.client("SLLM_REDIS_TLS"), timeout=3)


def test_tls_settings_name_missing_files_and_half_pairs(pki: Pki) -> None:
    with pytest.raises(SettingsError, match=r"SLLM_NATS_TLS_CA=/nowhere/ca\.pem: no such file"):
        StorageSettings.from_env({"SLLM_NATS_TLS_CA": "/nowhere/ca.pem"})
    with pytest.raises(SettingsError, match="SLLM_REDIS_TLS_CERT and SLLM_REDIS_TLS_KEY"):
        StorageSettings.from_env({"SLLM_REDIS_TLS_CERT": pki.client_cert})


# --- Valkey ACL users ---------------------------------------------------------------------


@pytest.fixture
def acl_redis() -> Iterator[tuple[EmbeddedRedis, Credentials]]:
    creds = Credentials.generate()
    with EmbeddedRedis(users=creds.redis_users(ROOT), persist=True) as server:
        assert isinstance(server, EmbeddedRedis)
        yield server, creds


async def test_a_services_valkey_user_keeps_to_the_clusters_keys_and_data_commands(
    acl_redis: tuple[EmbeddedRedis, Credentials],
) -> None:
    server, _ = acl_redis
    router = await connect_redis(server.url_for("router"))
    admin = await connect_redis(server.client_url)
    try:
        state = ClusterState(router, Keys(ROOT))
        spec = DeploymentSpec(name="m", checkpoint_uri="file:///m")
        assert await state.put_deployment(spec)
        assert (await state.get_deployment("m")) is not None
        assert await state.store_epoch()
        with pytest.raises(NoPermissionError):
            await router.set("elsewhere:key", b"x")  # outside the cluster's keys
        with pytest.raises(NoPermissionError):
            await router.flushall()
        with pytest.raises(NoPermissionError):
            await router.config_set("appendonly", "no")
        with pytest.raises(NoPermissionError):
            await router.keys("*")
        # The admin may do everything; the cluster's data is intact after the attempts.
        assert await admin.config_get("appendonly")
        assert (await ClusterState(admin, Keys(ROOT)).get_deployment("m")) is not None
    finally:
        await router.aclose()
        await admin.aclose()


async def test_valkey_refuses_the_default_login_and_a_wrong_password(
    acl_redis: tuple[EmbeddedRedis, Credentials],
) -> None:
    server, creds = acl_redis
    anonymous = aioredis.Redis.from_url(server.url)
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.set(f"{ROOT}:x", b"1")
    finally:
        await anonymous.aclose()
    wrong = server.url_for("worker").replace(creds.redis["worker"], "not-the-password")
    with pytest.raises(CredentialsError, match="refused the credentials"):
        await connect_redis(wrong)


async def test_state_written_by_acl_users_survives_a_kill_9(
    acl_redis: tuple[EmbeddedRedis, Credentials],
) -> None:
    """The append-only file replays the services' transactions (MULTI/EXEC) at a restart; with
    Valkey's default user turned off, Valkey 8.1 refused them (NOPERM) and the state was lost."""
    server, _ = acl_redis
    scheduler = await connect_redis(server.url_for("scheduler"))
    try:
        state = ClusterState(scheduler, Keys(ROOT))
        await state.put_deployment(DeploymentSpec(name="kept", checkpoint_uri="file:///m"))
        await state.delete_deployment("kept")  # a transaction
        await state.put_deployment(DeploymentSpec(name="m", checkpoint_uri="file:///m"))
    finally:
        await scheduler.aclose()
    await asyncio.sleep(1.5)  # appendfsync everysec
    server.kill()
    server.start()
    scheduler = await connect_redis(server.url_for("scheduler"))
    try:
        names = [d.name for d in await ClusterState(scheduler, Keys(ROOT)).deployments()]
        assert names == ["m"]
    finally:
        await scheduler.aclose()
    assert "NOPERM" not in server.log_path.read_text()
