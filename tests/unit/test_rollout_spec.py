"""Parsing and validating what an operator asks of a rollout."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_store.rollout.spec import (
    Gate,
    GateKind,
    RolloutSpec,
    format_selector,
    format_stages,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_selector,
    parse_stages,
    parse_target,
)

pytestmark = pytest.mark.unit


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    ("text", "gate", "printed"),
    [
        ("selftest", Gate(GateKind.SELFTEST), "selftest"),
        ("install", Gate(GateKind.INSTALL), "install"),
        ("error_rate<0.01", Gate(GateKind.ERROR_RATE, 0.01), "error_rate<0.01"),
        (" p99_ms < 40 ", Gate(GateKind.P99_MS, 40.0), "p99_ms<40"),
        ("p99_ms<12.5", Gate(GateKind.P99_MS, 12.5), "p99_ms<12.5"),
    ],
)
def test_gates_parse_and_print(text: str, gate: Gate, printed: str) -> None:
    assert Gate.parse(text) == gate
    assert str(gate) == printed


_USE = "use 'install', 'selftest', 'error_rate<FRACTION' or 'p99_ms<MILLISECONDS'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latency<3", f"unknown gate 'latency<3': {_USE}"),
        ("", f"unknown gate '': {_USE}"),
        ("p99_ms<=40", "gate 'p99_ms<=40': expected milliseconds above 0, e.g. 'p99_ms<40'"),
        ("p99_ms", "gate 'p99_ms': expected milliseconds above 0, e.g. 'p99_ms<40'"),
        ("p99_ms<nan", "gate 'p99_ms<nan': expected milliseconds above 0, e.g. 'p99_ms<40'"),
        (
            "error_rate<2",
            "gate error_rate: threshold 2.0 is not usable; expected a fraction between 0 and 1, "
            "e.g. 'error_rate<0.01'",
        ),
        (
            "p99_ms<0",
            "gate p99_ms: threshold 0.0 is not usable; expected milliseconds above 0, "
            "e.g. 'p99_ms<40'",
        ),
        ("selftest<1", "gate 'selftest<1': selftest takes no threshold; write 'selftest'"),
    ],
)
def test_bad_gates_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        Gate.parse(text)


@given(
    st.one_of(
        st.builds(Gate, st.sampled_from([GateKind.SELFTEST, GateKind.INSTALL])),
        st.builds(Gate, st.just(GateKind.ERROR_RATE), st.floats(1e-9, 1.0)),
        st.builds(Gate, st.just(GateKind.P99_MS), st.floats(1e-6, 1e9)),
    )
)
def test_printed_gates_parse_back(gate: Gate) -> None:
    assert Gate.parse(str(gate)) == gate


def test_stages_parse_and_print() -> None:
    assert parse_stages("5%, 25%,100%") == (0.05, 0.25, 1.0)
    assert parse_stages("0.5%,100%") == (0.005, 1.0)
    assert format_stages((0.05, 0.25, 1.0)) == "5%,25%,100%"
    assert format_stages((0.07, 1.0)) == "7%,100%"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            "stages '': expected percentages separated by commas, ending at 100%, "
            "e.g. '5%,25%,100%'",
        ),
        ("5,100%", "stage '5': expected a percentage such as '25%'"),
        ("0%,100%", "stage '0%': must be above 0% and at most 100%"),
        ("5%,150%", "stage '150%': must be above 0% and at most 100%"),
        (
            "50%,25%,100%",
            "stages '50%,25%,100%': each stage is the share of devices reached so far, so it "
            "must grow: '25%' follows '50%'",
        ),
        (
            "5%,50%",
            "stages '5%,50%': the last stage must be 100% so that every device is reached; "
            "add ',100%'",
        ),
    ],
)
def test_bad_stages_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        parse_stages(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("30s", 30.0), ("10m", 600.0), ("1h30m", 5400.0), ("1.5m", 90.0), ("2H", 7200.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "", "m", "10 m", "-5s", "1d", "10m5"])
def test_bad_durations(text: str) -> None:
    message = (
        f"duration {text!r}: expected a number with a unit s, m or h, e.g. '30s', '10m' or "
        "'1h30m' (or '0')"
    )
    with pytest.raises(ValueError, match=exactly(message)):
        parse_duration(text)


def test_percent_rate_selector_and_target() -> None:
    assert parse_percent("2%") == 0.02
    assert parse_percent("0") == 0.0
    assert parse_rate("50/min") == 50
    assert parse_rate("2/s") == 120
    assert parse_selector("site=plant-7, class=camera") == {"site": "plant-7", "class": "camera"}
    assert parse_selector("") == {}
    assert format_selector({"site": "plant-7", "class": "camera"}) == "class=camera,site=plant-7"
    assert parse_target("resnet:3") == ("resnet", 3)


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_percent, "2", "percentage '2': expected 0% to 100%, e.g. '2%'"),
        (parse_percent, "101%", "percentage '101%': expected 0% to 100%, e.g. '2%'"),
        (
            parse_rate,
            "0/min",
            "rate '0/min': expected a whole number of devices per minute (1 or more), "
            "e.g. '50/min' or '2/s'",
        ),
        (
            parse_rate,
            "50",
            "rate '50': expected a whole number of devices per minute (1 or more), "
            "e.g. '50/min' or '2/s'",
        ),
        (parse_selector, "site", "selector item 'site': expected key=value, e.g. 'site=plant-7'"),
        (parse_selector, "a=1,a=2", "selector 'a=1,a=2': label 'a' is given twice"),
        (
            parse_target,
            "resnet",
            "target 'resnet': expected NAME:VERSION with a version of 1 or more, e.g. 'resnet:3'",
        ),
        (
            parse_target,
            "resnet:0",
            "target 'resnet:0': expected NAME:VERSION with a version of 1 or more, e.g. 'resnet:3'",
        ),
    ],
)
def test_bad_flags_say_what_is_expected(parse: object, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        parse(text)  # type: ignore[operator]


def test_a_spec_from_cli_text() -> None:
    spec = RolloutSpec.parse(
        "resnet:3",
        selector="site=plant-7,class=camera",
        stages="5%,25%,100%",
        bake="10m",
        gates=["selftest", "error_rate<0.01", "p99_ms<40"],
        max_failures="2%",
        rate="50/min",
    )
    assert spec == RolloutSpec(
        model="resnet",
        version=3,
        selector={"class": "camera", "site": "plant-7"},
        stages=(0.05, 0.25, 1.0),
        bake_s=600.0,
        gates=(Gate.parse("selftest"), Gate.parse("error_rate<0.01"), Gate.parse("p99_ms<40")),
        max_failures=0.02,
        rate_per_min=50,
    )
    assert spec.ref == "resnet:3"
    assert spec.gate(GateKind.P99_MS) == Gate(GateKind.P99_MS, 40.0)
    assert spec.gate(GateKind.INSTALL) is None
    assert spec.selects({"site": "plant-7", "class": "camera", "row": "2"})
    assert not spec.selects({"site": "plant-7"})
    assert RolloutSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "bad name"}, "model name 'bad name' is not allowed"),
        ({"version": 0}, "m: version must be 1 or more, got 0"),
        ({"stages": (0.5,)}, "the last stage must be 100%"),
        ({"bake_s": -1.0}, "bake time must be 0 seconds or more, got -1.0"),
        ({"max_failures": 1.5}, "max_failures is a fraction from 0 to 1 (0% to 100%), got 1.5"),
        ({"rate_per_min": 0}, "rate must be 1 device per minute or more, got 0"),
        ({"selector": {"site": ""}}, "selector 'site'='': labels and values must not be empty"),
        (
            {"gates": (Gate.parse("p99_ms<4"), Gate.parse("p99_ms<5"))},
            "gate p99_ms is given more than once; keep one",
        ),
    ],
)
def test_a_spec_validates_itself(change: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "model": "m",
        "version": 1,
        "selector": {},
        "stages": (1.0,),
        "bake_s": 0.0,
        "gates": (),
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        RolloutSpec(**{**fields, **change})  # type: ignore[arg-type]
