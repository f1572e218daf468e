"""`sllm deploy`, `ls` and `rm`: parsing, the table, exit codes, and the commands against a
scripted router on 127.0.0.1 (the wait for ready or failed, the 409 and --update)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.cli import tables
from libs.cli.api_client import ApiError, ApiUnreachable
from libs.cli.api_cmd import error_exit_code
from libs.cli.deployments_cmd import (
    checkpoint_uri,
    deploy_body,
    deployments_table,
    instances_summary,
)
from libs.cli.main import build_parser, main

from .fake_router import FakeRouter, Reply

pytestmark = pytest.mark.unit

URI = "file:///models/m"


def deployment(status: str | None = "ready", **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "object": "deployment",
        "name": "m",
        "checkpoint_uri": URI,
        "min_instances": 0,
        "max_instances": 1,
        "keep_alive_s": 300.0,
        "target_concurrency": 8,
        "created_at": 1.0,
        "instances": [],
    }
    if status is not None:
        d["status"] = status
    return {**d, **over}


def instance(status: str) -> dict[str, Any]:
    return {"instance_id": f"i-{status}", "status": status, "worker_id": "w", "node_id": "n"}


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRouter]:
    monkeypatch.delenv("SLLM_API_KEY", raising=False)
    with FakeRouter() as fake:
        monkeypatch.setenv("SLLM_URL", fake.url)
        yield fake


# --- parsing -----------------------------------------------------------------------------


def test_deploy_body_holds_only_the_flags_given() -> None:
    args = build_parser().parse_args(["deploy", "m", URI, "--max", "2", "--keep-alive", "60"])
    assert deploy_body(args) == {
        "name": "m",
        "checkpoint_uri": URI,
        "max_instances": 2,
        "keep_alive_s": 60.0,
    }
    assert args.timeout == 600.0
    assert not args.update
    assert not args.no_wait


def test_deploy_of_an_adapter_and_of_an_embedding_model() -> None:
    args = build_parser().parse_args(["deploy", "lora", URI, "--base", "m", "--keep-alive", "9"])
    assert deploy_body(args) == {
        "name": "lora",
        "base": "m",
        "adapter_uri": URI,
        "keep_alive_s": 9.0,
    }
    args = build_parser().parse_args(["deploy", "e", URI, "--task", "embed"])
    assert deploy_body(args) == {"name": "e", "checkpoint_uri": URI, "task": "embed"}


def test_deploy_of_a_local_directory_sends_its_file_uri(tmp_path: Path) -> None:
    args = build_parser().parse_args(["deploy", "m", str(tmp_path), "--min", "1", "--target", "4"])
    assert deploy_body(args) == {
        "name": "m",
        "checkpoint_uri": tmp_path.resolve().as_uri(),
        "min_instances": 1,
        "target_concurrency": 4,
    }


def test_a_path_becomes_a_file_uri_and_a_repository_id_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert checkpoint_uri("here") == (tmp_path / "here").resolve().as_uri()
    assert checkpoint_uri("./not-yet") == (tmp_path / "not-yet").resolve().as_uri()
    assert checkpoint_uri("/abs/dir") == "file:///abs/dir"
    assert checkpoint_uri("Qwen/Qwen2-0.5B") == "Qwen/Qwen2-0.5B"
    assert checkpoint_uri("hf://Qwen/Qwen2-0.5B@main") == "hf://Qwen/Qwen2-0.5B@main"


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "m"],
        ["deploy", "m", URI, "--min", "-1"],
        ["deploy", "m", URI, "--max", "two"],
        ["deploy", "m", URI, "--timeout", "nan"],
        ["rm"],
        ["ls", "extra"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: sllm" in capsys.readouterr().err


def test_url_defaults_to_the_environment_then_sllm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from libs.cli.api_cmd import client

    monkeypatch.delenv("SLLM_URL", raising=False)
    assert client(build_parser().parse_args(["ls"])).url == "http://127.0.0.1:8343"
    monkeypatch.setenv("SLLM_URL", "http://elsewhere:1/")
    assert client(build_parser().parse_args(["ls"])).url == "http://elsewhere:1"
    args = build_parser().parse_args(["ls", "--url", "http://given:2"])
    assert client(args).url == "http://given:2"


# --- rendering and exit codes ------------------------------------------------------------


def test_table_columns_are_aligned_under_their_headers() -> None:
    text = tables.render(["A", "LONGER"], [["xxxxx", "1"], ["y"]])
    assert text == "A       LONGER\nxxxxx   1\ny\n"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (90, "90s"), (300, "5m"), (3600, "1h"), (172800, "2d"), (1.5, "1.5s")],
)
def test_durations_are_short_and_exact(seconds: float, text: str) -> None:
    assert tables.duration(seconds) == text


def test_instances_are_counted_by_status_ready_first() -> None:
    states = ["loading", "ready", "weird", "ready"]
    assert instances_summary([instance(s) for s in states]) == "2 ready, 1 loading, 1 weird"
    assert instances_summary([]) == "none"


def test_deployments_table_shows_an_error_column_only_for_a_failure() -> None:
    ok = deployment(instances=[instance("ready"), instance("loading")])
    lines = deployments_table([ok]).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "URI", "MIN/MAX", "KEEP-ALIVE", "INSTANCES"]
    assert lines[1].split() == ["m", "ready", URI, "0/1", "5m", "1", "ready,", "1", "loading"]

    bad = deployment("failed", name="broken", error="no such file", keep_alive_s=90)
    lines = deployments_table([ok, bad]).splitlines()
    assert lines[0].endswith("ERROR")
    assert lines[2].startswith("broken")
    assert lines[2].endswith("no such file")
    assert lines[0].index("STATUS") == lines[2].index("failed")  # aligned


def test_a_deployment_without_status_counts_as_ready() -> None:
    assert deployments_table([deployment(None)]).splitlines()[1].split()[1] == "ready"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ApiUnreachable("refused"), 3),
        (ApiError(401, "no key"), 4),
        (ApiError(403, "admin only"), 4),
        (ApiError(404, "no deployment"), 5),
        (ApiError(409, "exists", "deployment_exists"), 1),
        (ApiError(500, "boom"), 1),
    ],
)
def test_exit_codes(exc: ApiError | ApiUnreachable, code: int) -> None:
    assert error_exit_code(exc) == code


# --- deploy against a scripted router ----------------------------------------------------


def test_deploy_waits_through_preparing_until_ready(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", "/v1/deployments", Reply(201, deployment("preparing")))
    router.on(
        "GET",
        "/v1/deployments/m",
        Reply(200, deployment("preparing")),
        Reply(200, deployment("preparing", instances=[instance("loading")])),
        Reply(200, deployment("ready", instances=[instance("ready")])),
    )
    assert main(["deploy", "m", URI, "--max", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "m: preparing",
        "m: preparing (1 loading)",
        "m ready",
    ]
    (post,) = router.seen("POST")
    assert post.body == {"name": "m", "checkpoint_uri": URI, "max_instances": 2}
    assert len(router.seen("GET")) == 3


def test_deploy_that_fails_prints_the_error_and_exits_1(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", "/v1/deployments", Reply(201, deployment("preparing")))
    router.on(
        "GET",
        "/v1/deployments/m",
        Reply(200, deployment("preparing")),
        Reply(200, deployment("failed", error="checkpoint not found: /models/m")),
    )
    assert main(["deploy", "m", URI]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == ["m: preparing"]
    assert "m failed: checkpoint not found: /models/m" in out.err


def test_deploy_gives_up_waiting_after_its_timeout(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", "/v1/deployments", Reply(201, deployment("preparing")))
    router.on("GET", "/v1/deployments/m", Reply(200, deployment("preparing")))
    assert main(["deploy", "m", URI, "--timeout", "0.2"]) == 1
    assert "still preparing after 0.2s" in capsys.readouterr().err


def test_deploy_to_a_router_without_status_is_ready_at_once(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", "/v1/deployments", Reply(200, deployment(None)))
    router.on("GET", "/v1/deployments/m", Reply(200, deployment(None)))
    assert main(["deploy", "m", URI]) == 0
    assert capsys.readouterr().out == "m ready\n"


def test_deploy_no_wait_returns_after_the_post(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", "/v1/deployments", Reply(201, deployment("preparing")))
    assert main(["deploy", "m", URI, "--no-wait"]) == 0
    assert capsys.readouterr().out == "m: preparing\n"
    assert router.seen("GET") == []


def test_deploy_json_prints_only_the_final_body_on_stdout(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", "/v1/deployments", Reply(201, deployment("preparing")))
    router.on("GET", "/v1/deployments/m", Reply(200, deployment("ready")))
    assert main(["deploy", "m", URI, "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["status"] == "ready"
    assert "m ready" in out.err


def test_deploy_of_a_taken_name_is_a_conflict_without_update(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = {"error": {"message": "deployment 'm' exists", "code": "deployment_exists"}}
    router.on("POST", "/v1/deployments", Reply(409, taken))
    assert main(["deploy", "m", URI, "--max", "3"]) == 1
    assert "conflict: a deployment named 'm' already exists" in capsys.readouterr().err
    assert router.seen("PATCH") == []


def test_deploy_update_patches_only_the_knobs_given(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = {"error": {"message": "deployment 'm' exists", "code": "deployment_exists"}}
    router.on("POST", "/v1/deployments", Reply(409, taken))
    router.on("GET", "/v1/deployments/m", Reply(200, deployment("ready", max_instances=3)))
    router.on("PATCH", "/v1/deployments/m", Reply(200, deployment("ready", max_instances=3)))
    assert main(["deploy", "m", URI, "--max", "3", "--keep-alive", "30", "--update"]) == 0
    (patch,) = router.seen("PATCH")
    assert patch.body == {"max_instances": 3, "keep_alive_s": 30.0}
    assert capsys.readouterr().out.splitlines() == [
        "m: updated (max_instances=3, keep_alive_s=30)",
        "m ready",
    ]


def test_deploy_update_refuses_another_uri(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", "/v1/deployments", Reply(409, {"error": {"message": "exists"}}))
    router.on("GET", "/v1/deployments/m", Reply(200, deployment("ready")))
    assert main(["deploy", "m", "file:///other", "--update"]) == 1
    assert "checkpoint_uri cannot change" in capsys.readouterr().err
    assert router.seen("PATCH") == []


def test_deploy_sends_the_api_key_and_a_refused_key_exits_4(
    router: FakeRouter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLLM_API_KEY", "sk-wrong")
    router.on("POST", "/v1/deployments", Reply(401, {"error": {"message": "invalid API key"}}))
    assert main(["deploy", "m", URI]) == 4
    assert router.seen("POST")[0].headers["authorization"] == "Bearer sk-wrong"
    assert "invalid API key (set SLLM_API_KEY" in capsys.readouterr().err


def test_a_server_error_exits_1_with_its_message(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = {"error": {"message": "checkpoint_uri: outside the allow-list", "code": None}}
    router.on("POST", "/v1/deployments", Reply(400, refused))
    assert main(["deploy", "m", URI]) == 1
    assert capsys.readouterr().err == "sllm deploy: checkpoint_uri: outside the allow-list\n"


def test_an_unreachable_router_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeRouter() as gone:
        url = gone.url
    for argv in (["ls"], ["rm", "m"], ["deploy", "m", URI]):
        assert main([*argv, "--url", url]) == 3
        assert "cannot reach" in capsys.readouterr().err


# --- ls and rm ---------------------------------------------------------------------------


def test_ls_prints_a_table_and_json(router: FakeRouter, capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"object": "list", "data": [deployment(instances=[instance("ready")])]}
    router.on("GET", "/v1/deployments", Reply(200, answer))
    assert main(["ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NAME")
    assert lines[1].split()[:2] == ["m", "ready"]
    assert main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == answer


def test_ls_of_no_deployments_prints_the_headers(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("GET", "/v1/deployments", Reply(200, {"object": "list", "data": []}))
    assert main(["ls"]) == 0
    assert capsys.readouterr().out.split() == [
        "NAME",
        "STATUS",
        "URI",
        "MIN/MAX",
        "KEEP-ALIVE",
        "INSTANCES",
    ]


def test_rm_prints_the_stopped_instances(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = {"object": "deployment.deleted", "name": "m", "deleted": True}
    router.on("DELETE", "/v1/deployments/m", Reply(200, {**gone, "stopped_instances": ["i-1"]}))
    assert main(["rm", "m"]) == 0
    assert capsys.readouterr().out == "removed m\n  stopped instance i-1\n"
    assert main(["rm", "m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stopped_instances"] == ["i-1"]


def test_rm_of_an_unknown_name_exits_5(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = {"error": {"message": "no deployment named 'x'", "code": "model_not_found"}}
    router.on("DELETE", "/v1/deployments/x", Reply(404, missing))
    assert main(["rm", "x"]) == 5
    assert capsys.readouterr().err == "sllm rm: no deployment named 'x'\n"
