"""Fuzzing ``config.pbtxt``: any text parses into a config the server can use, or is refused.

``parse_config`` must raise ModelLoadError naming the file for bad text; what parses must then
complete against a graph (or raise ModelLoadError), give its batching settings (or ValueError
naming the model), its instance count and its versions, without any other exception.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.batching.config import BatchingConfig
from edgefabric.errors import ModelLoadError
from edgefabric.kserve.datatypes import DATATYPES
from edgefabric.models.config import (
    GraphTensor,
    complete_config,
    instance_count,
    parse_config,
    select_versions,
)
from edgefabric.samples import MLP_CONFIG
from tests.fuzz.profile import FUZZ

pytestmark = pytest.mark.unit

BATCHING = """\
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 10 }
  priority_queue_policy { key: 2 value { max_queue_size: 3 allow_timeout_override: true } }
}
instance_group [ { count: 2 kind: KIND_CPU } ]
version_policy { specific { versions: [ 1, 3 ] } }
"""
TOKENS = [
    "max_batch_size:", "dynamic_batching {", "}", "{", "[", "]", ",", ":", '"x"', "input",
    "output", "dims:", "-1", "0", "99999999999999999999", "-9223372036854775808",
    "priority_levels:", "default_priority_level:", "preferred_batch_size:", "TYPE_FP32",
    "data_type:", "name:", "instance_group", "count:", "version_policy", "latest {",
    "num_versions:", "specific {", "versions:", "priority_queue_policy {", "key:", "value {",
    "max_queue_size:", "timeout_action:", "DELAY", "REJECT", "#", "\n", "'\\x'", "\\",
    "parameters { key: \"k\" value { string_value: \"v\" } }", "inf", "nan", "1e400",
]  # fmt: skip
GRAPH_IN = [GraphTensor("x", DATATYPES["FP32"], (None, 16))]
GRAPH_OUT = [GraphTensor("logits", DATATYPES["FP32"], (None, 8))]


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    """A valid config with a few tokens inserted, deleted or replaced."""
    text = draw(st.sampled_from([MLP_CONFIG, BATCHING]))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        token = draw(st.sampled_from(TOKENS))
        if action == "insert":
            text = text[:at] + " " + token + " " + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        else:
            text = text[:at] + token + text[at + len(token) :]
    return text


texts = st.one_of(
    mutated_configs(),
    st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join),
    st.text(max_size=200),
    st.integers(1, 3000).map(lambda depth: "dynamic_batching {" * depth),
)


def use(config: mc.ModelConfig) -> None:
    """Everything the repository does with a parsed config before serving it."""
    try:
        done = complete_config(
            config, GRAPH_IN, GRAPH_OUT, default_max_batch_size=8, source="config.pbtxt"
        )
    except ModelLoadError:
        return
    try:
        batching = BatchingConfig.from_model_config(done)
    except ValueError as error:
        refusal = str(error)
    else:
        refusal = ""
        if batching is not None:
            assert 1 <= batching.default_level <= batching.levels
    assert not refusal or refusal.startswith("model 'm': dynamic_batching: ")
    assert instance_count(done) >= 1
    versions = select_versions(done.version_policy, [1, 2, 3])
    assert set(versions) <= {1, 2, 3}


@FUZZ
@given(texts)
@example('output [ { name: "y" data_type: 99999999999999999999 } ]')  # was a bare ValueError
def test_config_text_parses_or_is_refused_with_the_file_named(text: str) -> None:
    try:
        config = parse_config(text, source="repo/m/config.pbtxt")
    except ModelLoadError as error:
        refusal = str(error)
    else:
        refusal = ""
        config.name = "m"
        use(config)
    assert not refusal or refusal.startswith("repo/m/config.pbtxt: invalid model config")
