"""Broker URLs and the topic tree: pure string rules."""

from __future__ import annotations

import pytest

from edgefabric import topics
from edgefabric.mqtt import BrokerAddress

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", BrokerAddress("127.0.0.1", 1883, tls=False)),
        ("mqtt://broker.local", BrokerAddress("broker.local", 1883, tls=False)),
        ("mqtts://broker.local", BrokerAddress("broker.local", 8883, tls=True)),
        ("mqtts://[::1]:9000/", BrokerAddress("::1", 9000, tls=True)),
    ],
)
def test_broker_urls_parse(url: str, expected: BrokerAddress) -> None:
    assert BrokerAddress.parse(url) == expected
    assert BrokerAddress.parse(expected.url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("tcp://127.0.0.1:1883", "unknown scheme"),
        ("127.0.0.1:1883", "unknown scheme"),
        ("mqtt://:1883", "no host"),
        ("mqtt://host:99999", "port"),
        ("mqtt://host:0", "port 0"),
        ("mqtt://user@host", "only a host and port"),
        ("mqtt://host/topic", "only a host and port"),
    ],
)
def test_bad_broker_urls_say_what_is_expected(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        BrokerAddress.parse(url)


def test_topic_tree() -> None:
    assert topics.device_status("cam-7") == "ef/v1/dev/cam-7/status"
    assert topics.device_desired("cam-7") == "ef/v1/dev/cam-7/desired"
    assert topics.repo_request("cam-7") == "ef/v1/repo/req/cam-7"
    assert topics.repo_response("cam-7") == "ef/v1/repo/resp/cam-7"
    assert topics.repo_request_client("ef/v1/repo/req/cam-7") == "cam-7"
    assert topics.shared("store", topics.REPO_REQUEST_FILTER) == "$share/store/ef/v1/repo/req/+"


@pytest.mark.parametrize("device", ["", "a/b", "+", "#", "$SYS", "x\x00"])
def test_ids_that_would_escape_their_topic_level_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match="topic level"):
        topics.device_status(device)


@pytest.mark.parametrize(
    "topic", ["ef/v1/repo/req/", "ef/v1/repo/req/a/b", "ef/v1/dev/a/status", "ef/v1/repo/req/+"]
)
def test_non_request_topics_have_no_client(topic: str) -> None:
    assert topics.repo_request_client(topic) is None
