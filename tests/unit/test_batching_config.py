"""BatchingConfig: reading Triton's dynamic_batching block and refusing inconsistent settings."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.batching.config import BatchingConfig, QueuePolicy, TimeoutAction
from edgefabric.errors import InvalidInputError

pytestmark = pytest.mark.unit


def _model_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_from_model_config_reads_every_field() -> None:
    config = BatchingConfig.from_model_config(
        _model_config(
            """
            name: "resnet" max_batch_size: 16
            instance_group { count: 2 } instance_group { count: 3 }
            dynamic_batching {
              preferred_batch_size: [8, 4]
              max_queue_delay_microseconds: 250
              preserve_ordering: true
              priority_levels: 3
              default_priority_level: 2
              default_queue_policy { max_queue_size: 10 }
              priority_queue_policy {
                key: 3
                value {
                  timeout_action: DELAY default_timeout_microseconds: 5000
                  allow_timeout_override: true max_queue_size: 4
                }
              }
            }
            """
        )
    )
    assert config == BatchingConfig(
        max_batch_size=16,
        preferred_batch_sizes=(4, 8),
        max_queue_delay_us=250,
        preserve_ordering=True,
        priority_levels=3,
        default_priority_level=2,
        default_queue_policy=QueuePolicy(max_queue_size=10),
        priority_queue_policies={
            3: QueuePolicy(TimeoutAction.DELAY, 5000, allow_timeout_override=True, max_queue_size=4)
        },
        max_concurrent_batches=5,
    )
    assert config.policy_for(1) == QueuePolicy(max_queue_size=10)
    assert config.policy_for(3).timeout_action is TimeoutAction.DELAY


@pytest.mark.parametrize(
    "text",
    [
        'name: "m" max_batch_size: 8',
        'name: "m" max_batch_size: 0 dynamic_batching {}',
    ],
    ids=["no-dynamic-batching", "max-batch-size-0"],
)
def test_from_model_config_is_none_without_dynamic_batching(text: str) -> None:
    assert BatchingConfig.from_model_config(_model_config(text)) is None


def test_instance_groups_without_count_count_as_one() -> None:
    config = BatchingConfig.from_model_config(
        _model_config('name: "m" max_batch_size: 4 dynamic_batching {} instance_group {}')
    )
    assert config is not None
    assert config.max_concurrent_batches == 1
    bare = BatchingConfig.from_model_config(
        _model_config('name: "m" max_batch_size: 4 dynamic_batching {}')
    )
    assert bare is not None
    assert bare.max_concurrent_batches == 1


def test_from_model_config_names_the_model_in_errors() -> None:
    text = 'name: "resnet" max_batch_size: 4 dynamic_batching { preferred_batch_size: 9 }'
    with pytest.raises(ValueError, match=r"model 'resnet': dynamic_batching: preferred"):
        BatchingConfig.from_model_config(_model_config(text))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"preferred_batch_sizes": (0, 4)}, r"preferred_batch_sizes must lie in 1\.\.max"),
        ({"preferred_batch_sizes": (9,)}, r"got \[9\]"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be >= 0"),
        ({"priority_levels": -1}, "priority_levels must be >= 0"),
        (
            {"priority_levels": 2, "default_priority_level": 0},
            r"default_priority_level must lie in 1\.\.priority_levels \(2\)",
        ),
        (
            {"priority_levels": 2, "default_priority_level": 3},
            r"default_priority_level must lie in 1\.\.priority_levels \(2\)",
        ),
        ({"default_priority_level": 2}, "must be 0 when priority_levels is 0"),
        (
            {
                "priority_levels": 2,
                "default_priority_level": 1,
                "priority_queue_policies": {3: QueuePolicy()},
            },
            r"keys must lie in 1\.\.2, got \[3\]",
        ),
        ({"max_concurrent_batches": 0}, "max_concurrent_batches must be >= 1"),
    ],
)
def test_invalid_settings_are_refused_with_a_clear_message(
    kwargs: dict[str, object], message: str
) -> None:
    settings: dict[str, object] = {"max_batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        BatchingConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"default_timeout_us": -5}, "default_timeout_us must be >= 0"),
        ({"max_queue_size": -1}, "max_queue_size must be >= 0"),
    ],
)
def test_invalid_queue_policy_is_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QueuePolicy(**kwargs)  # type: ignore[arg-type]


def test_priority_zero_is_the_default_level_and_out_of_range_is_invalid_input() -> None:
    config = BatchingConfig(max_batch_size=4, priority_levels=3, default_priority_level=2)
    assert config.level_for(0) == 2
    assert config.level_for(3) == 3
    with pytest.raises(InvalidInputError, match=r"priority 4 is out of range.*1 \(highest\) to 3"):
        config.level_for(4)
    assert BatchingConfig(max_batch_size=4).level_for(0) == 1


@pytest.mark.parametrize(
    ("policy", "requested_us", "expected_us"),
    [
        (QueuePolicy(default_timeout_us=100), 50, 100),
        (QueuePolicy(default_timeout_us=100, allow_timeout_override=True), 50, 50),
        (QueuePolicy(default_timeout_us=100, allow_timeout_override=True), 500, 100),
        (QueuePolicy(default_timeout_us=100, allow_timeout_override=True), 0, 100),
        (QueuePolicy(allow_timeout_override=True), 70, 70),
    ],
    ids=["no-override", "shorter", "never-longer", "none-asked", "no-default"],
)
def test_timeout_override_may_only_shorten(
    policy: QueuePolicy, requested_us: int, expected_us: int
) -> None:
    assert policy.timeout_us(requested_us) == expected_us


def test_config_is_immutable() -> None:
    policies = {1: QueuePolicy(max_queue_size=1)}
    config = BatchingConfig(max_batch_size=4, priority_queue_policies=policies)
    policies[1] = QueuePolicy(max_queue_size=99)
    assert config.policy_for(1).max_queue_size == 1
    with pytest.raises(TypeError):
        config.priority_queue_policies[1] = QueuePolicy()  # type: ignore[index]
    assert hash(config) == hash(BatchingConfig(max_batch_size=4, priority_queue_policies=policies))
