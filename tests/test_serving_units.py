"""Unit tests of the serving pieces that need neither Feast nor a model.

Config resolution (defaults < env < flags), provider selection and the check that a
CUDA request never silently runs on CPU, request validation, status mapping.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from core.providers import CPU, CUDA
from serving.api.tailrank.v1 import ranking_pb2
from serving.config import ServerConfig, load_config, to_argv
from serving.errors import ConfigError, InvalidArgument, Unavailable, status_for
from serving.inference import check_running, choose_providers
from serving.server import validate


def test_defaults_env_and_flags_resolve_in_order() -> None:
    env = {"TAILRANK_PORT": "6000", "TAILRANK_TAIL_WEIGHT": "0.5", "TAILRANK_ITEM_CACHE": "false"}
    config = load_config(["--tail-weight", "0.1", "--repo", "r"], env=env)
    assert config.port == 6000  # env over default
    assert config.tail_weight == pytest.approx(0.1)  # flag over env
    assert config.item_cache is False
    assert config.repo == Path("r")
    assert config.max_candidates == ServerConfig().max_candidates


def test_no_event_log_flag_and_env_switch_it_off() -> None:
    assert load_config([], env={}).event_log_url == "sqlite:///data/events.db"
    assert load_config(["--no-event-log"], env={}).event_log_url is None
    assert load_config([], env={"TAILRANK_NO_EVENT_LOG": "1"}).event_log_url is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--provider", "tpu"], "provider must be one of"),
        (["--tail-weight", "2"], "tail_weight must be in [0, 1]"),
        (["--max-candidates", "0"], "max_candidates must be >= 1"),
        (["--port", "70000"], "port must be in"),
        (["--workers", "many"], "cannot read 'many' as int"),
    ],
)
def test_bad_config_says_what_to_change(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(argv, env={})
    assert message in str(err.value)


def test_to_argv_round_trips_whatever_the_environment() -> None:
    config = ServerConfig(
        fs_yaml=Path("f.yaml"), item_cache=False, event_log_url=None, processes=3,
        max_in_flight=7, tail_weight=0.25,
    )  # fmt: skip
    env = {"TAILRANK_ITEM_CACHE": "true", "TAILRANK_EVENT_LOG_URL": "sqlite:///x.db"}
    assert load_config(to_argv(config), env=env) == config
    assert load_config(to_argv(ServerConfig()), env=env) == ServerConfig()


def test_processes_and_in_flight_defaults() -> None:
    config = ServerConfig(workers=6)
    assert config.in_flight_limit == 12 and ServerConfig(max_in_flight=3).in_flight_limit == 3
    assert config.process_count >= 1 and ServerConfig(processes=2).process_count == 2
    with pytest.raises(ConfigError, match="processes and max_in_flight must be >= 0"):
        load_config(["--max-in-flight", "-1"], env={})


def test_bad_bool_env_is_rejected() -> None:
    with pytest.raises(ConfigError, match="item_cache"):
        load_config([], env={"TAILRANK_ITEM_CACHE": "maybe"})


def test_provider_choice() -> None:
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(ConfigError, match="make install-gpu"):
        choose_providers("cuda", ["AzureExecutionProvider", CPU])


def test_cuda_asked_but_cpu_running_is_an_error() -> None:
    with pytest.raises(ConfigError, match="runs on"):
        check_running("cuda", [CUDA, CPU], [CPU])
    assert check_running("auto", [CUDA, CPU], [CPU]) == CPU  # auto may fall back, logged
    assert check_running("cuda", [CUDA, CPU], [CUDA, CPU]) == CUDA


def request(**fields) -> ranking_pb2.RankRequest:
    return ranking_pb2.RankRequest(**{"user_id": "u", "candidate_ids": ["a", "b"], **fields})


def test_valid_request_gets_defaults_and_a_request_id() -> None:
    args = validate(request(), max_candidates=10, tail_weight=0.3)
    assert args.candidates == ["a", "b"] and args.top_k == 0
    assert args.tail_weight == pytest.approx(0.3)
    assert len(args.request_id) == 32
    override = validate(request(tail_weight=0.0, request_id="r1"), 10, 0.3)
    assert override.tail_weight == 0.0 and override.request_id == "r1"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": ""}, "user_id is empty"),
        ({"candidate_ids": []}, "candidate_ids is empty"),
        ({"candidate_ids": list("abcdefghijk")}, "11 ids, more than the limit 10"),
        ({"candidate_ids": ["a", ""]}, "candidate_ids[1] is empty"),
        ({"candidate_ids": ["a", "b", "a"]}, "duplicates (e.g. 'a')"),
        ({"candidate_ids": ["a", "b", "c", "b"]}, "duplicates (e.g. 'b')"),
        ({"candidate_ids": ["é" * 129]}, "258 bytes"),
        ({"top_k": -3}, "top_k is -3"),
        ({"tail_weight": -0.5}, "tail_weight is -0.5"),
        ({"tail_weight": 1.5}, "tail_weight is 1.5: use a value in [0, 1]"),
        ({"request_id": "x" * 129}, "request_id is longer than 128 bytes"),
        ({"user_id": "a\x00b"}, "user_id contains a NUL"),
        ({"candidate_ids": ["a", "b\x00"]}, "candidate_ids[1] contains a NUL"),
        ({"request_id": "r\x00"}, "request_id contains a NUL"),
    ],
)
def test_invalid_requests_say_what_to_fix(fields: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate(request(**fields), max_candidates=10, tail_weight=0.3)
    assert message in str(err.value)


def test_fields_pass_through_to_the_ranker() -> None:
    args = validate(request(user_id="ユーザー", top_k=7, explain=True, request_id="r9"), 10, 0.3)
    assert (args.user_id, args.top_k, args.explain, args.request_id) == ("ユーザー", 7, True, "r9")
    assert validate(request(), 10, 0.3).explain is False


# --- every limit exactly at it (accepted) and one past it (refused, field named) --------
EMOJI = "\U0001f6d2"  # 4 UTF-8 bytes: 64 of them are 256 bytes in 64 characters
FLOAT32_ABOVE_1 = float(np.nextafter(np.float32(1.0), np.float32(2.0)))  # tail_weight is float


def refused(fields: dict, max_candidates: int = 10) -> str:
    """The INVALID_ARGUMENT message ``validate`` gives for a request with ``fields``."""
    with pytest.raises(InvalidArgument) as err:
        validate(request(**fields), max_candidates=max_candidates, tail_weight=0.3)
    code, message = status_for(err.value)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    return message


@pytest.mark.parametrize("limit", [1, 3, 10])
def test_max_candidates_exactly_is_accepted_one_more_is_refused(limit: int) -> None:
    ids = [f"c{i}" for i in range(limit + 1)]
    assert validate(request(candidate_ids=ids[:limit]), limit, 0.3).candidates == ids[:limit]
    assert refused({"candidate_ids": ids}, limit) == (
        f"candidate_ids has {limit + 1} ids, more than the limit {limit}: split the request"
    )


@pytest.mark.parametrize(
    "at_limit",
    ["a" * 256, "é" * 128, EMOJI * 64, "日" * 85 + "a", "é" * 127 + "ab"],
    ids=["ascii", "2-byte", "4-byte", "3-byte", "mixed"],
)
def test_ids_of_exactly_256_bytes_are_accepted(at_limit: str) -> None:
    assert len(at_limit.encode()) == 256
    args = validate(request(user_id=at_limit, candidate_ids=["a", at_limit]), 10, 0.3)
    assert args.user_id == at_limit and args.candidates == ["a", at_limit]


@pytest.mark.parametrize(
    "past_limit",
    # 65 x 4 bytes is 260 bytes in 65 characters: just past the 64-character fast path
    ["a" * 257, "é" * 128 + "a", "日" * 85 + "é", EMOJI * 64 + "a", EMOJI * 65],
    ids=["ascii", "2-byte", "3-byte", "4-byte", "65-emoji"],
)
def test_ids_past_256_bytes_are_refused_naming_the_field(past_limit: str) -> None:
    size = len(past_limit.encode())
    assert size > 256
    tail = f"longer than 256 bytes ({size} bytes): send a shorter id"
    assert refused({"user_id": past_limit}) == f"user_id is {tail}"
    assert refused({"candidate_ids": ["a", "b", past_limit]}) == f"candidate_ids[2] is {tail}"


def test_request_id_of_exactly_128_bytes_is_kept_and_129_refused() -> None:
    at_limit = "ü" * 64
    assert validate(request(request_id=at_limit), 10, 0.3).request_id == at_limit
    assert refused({"request_id": at_limit + "x"}) == (
        "request_id is longer than 128 bytes (129 bytes): send a shorter id"
    )
    assert "(132 bytes)" in refused({"request_id": EMOJI * 33})


def test_tail_weight_ends_are_accepted_and_just_outside_refused() -> None:
    assert validate(request(tail_weight=0.0), 10, 0.3).tail_weight == 0.0
    assert validate(request(tail_weight=1.0), 10, 0.3).tail_weight == 1.0
    assert FLOAT32_ABOVE_1 > 1.0
    assert refused({"tail_weight": FLOAT32_ABOVE_1}).startswith("tail_weight is 1.0000001")
    assert refused({"tail_weight": -1e-7}).startswith("tail_weight is -1")


def test_top_k_zero_is_all_and_minus_one_is_refused() -> None:
    assert validate(request(top_k=0), 10, 0.3).top_k == 0
    assert validate(request(top_k=1), 10, 0.3).top_k == 1
    assert refused({"top_k": -1}) == "top_k is -1: use 0 (all) or a positive number"


def test_empty_candidate_list_message() -> None:
    assert refused({"candidate_ids": []}) == (
        "candidate_ids is empty: send at least one candidate item id"
    )


def test_status_mapping() -> None:
    assert status_for(InvalidArgument("x")) == (grpc.StatusCode.INVALID_ARGUMENT, "x")
    assert status_for(Unavailable("down"))[0] is grpc.StatusCode.UNAVAILABLE
    code, message = status_for(KeyError("secret"))
    assert code is grpc.StatusCode.INTERNAL and "secret" not in message


def test_workers_get_the_store_variables_but_not_the_server_settings(monkeypatch) -> None:
    """The supervisor passes its config to workers as flags, so no TAILRANK_<FIELD> may
    override one; variables the Feast templates read (TAILRANK_REDIS_*) must still pass."""
    from serving.config import config_env_names
    from serving.supervisor import Supervisor

    monkeypatch.setenv("TAILRANK_PORT", "1")
    monkeypatch.setenv("TAILRANK_NO_EVENT_LOG", "1")
    monkeypatch.setenv("TAILRANK_REDIS_HOST", "redis.internal")
    supervisor = Supervisor(ServerConfig(), 50051, {})
    assert "TAILRANK_PORT" in config_env_names()
    assert "TAILRANK_PORT" not in supervisor.env and "TAILRANK_NO_EVENT_LOG" not in supervisor.env
    assert supervisor.env["TAILRANK_REDIS_HOST"] == "redis.internal"


def test_influences_add_up_repeats_and_keep_the_heaviest_three() -> None:
    from serving.ranker import influences

    weights = np.array([0.1, 0.0, 0.3, 0.25, 0.35], np.float32)
    got = influences(weights, ["a", "pad", "b", "a", "c"])
    assert [i for i, _ in got] == ["a", "c", "b"]  # a: 0.1 + 0.25
    assert got[0][1] == pytest.approx(0.35) and len(influences(weights, list("vwxyz"), k=2)) == 2
    assert influences(np.zeros(2, np.float32), ["p", "q"]) == []


def test_client_prints_the_history_items_behind_a_score() -> None:
    from serving.client import format_response

    reply = ranking_pb2.RankResponse(model_version="m")
    item = reply.items.add(item_id="i9", score=0.5, click_probability=0.5)
    item.because.add(item_id="i1", weight=0.6)
    item.because.add(item_id="i2", weight=0.3)
    text = format_response(reply, {"i1": "Boots", "i9": "Socks"})
    assert "because of: Boots (0.60); i2 (0.30)" in text
