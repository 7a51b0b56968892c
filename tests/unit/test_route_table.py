"""Route tables from ``--route`` entries and TOML/JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.routing import (
    Route,
    format_route,
    load_routes,
    parse_route,
    parse_routes,
    routes_from_mapping,
)

pytestmark = pytest.mark.unit


def test_the_documented_example_reads_as_written() -> None:
    route = parse_route("mlp=local:0.9,edge-plant7:0.1;shadow=remote-triton;affinity=site")
    assert route == Route(
        "mlp",
        ("local", "edge-plant7"),
        {"local": 0.9, "edge-plant7": 0.1},
        shadow="remote-triton",
        affinity_label="site",
    )


def test_versions_hedging_failover_only_targets_and_any_pool() -> None:
    assert parse_route("mlp = a@1:3, a@2:1 ; hedge") == Route(
        "mlp", ("a@1", "a@2"), {"a@1": 3, "a@2": 1}, hedge=True
    )
    assert parse_route("mlp=a:1,spare").weights == {"a": 1}
    assert parse_route("mlp=a:1,*") == Route("mlp", (), {"a": 1})
    assert parse_route("mlp=*;affinity=site") == Route("mlp", affinity_label="site")


def test_hedging_after_a_percentile_or_a_fixed_delay() -> None:
    assert parse_route("mlp=a,b;hedge=p99") == Route(
        "mlp", ("a", "b"), hedge=True, hedge_quantile=0.99
    )
    assert parse_route("mlp=a,b;hedge=P99.9").hedge_quantile == pytest.approx(0.999)
    assert parse_route("mlp=a,b;hedge=20ms") == Route(
        "mlp", ("a", "b"), hedge=True, hedge_after_ms=20
    )
    assert parse_route("mlp=a,b;hedge=0.5ms").hedge_after_ms == 0.5
    assert routes_from_mapping({"mlp": {"hedge": "15ms"}})["mlp"].hedge_after_ms == 15
    assert routes_from_mapping({"mlp": {"hedge": "p90"}})["mlp"].hedge_quantile == 0.9
    assert not routes_from_mapping({"mlp": {"hedge": False}})["mlp"].hedge
    for text in ("mlp=a,b;hedge=p99", "mlp=a,b;hedge=20ms", "mlp=a,b;hedge=0.25ms"):
        assert format_route(parse_route(text)) == text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hedge_quantile": 0.9}, "need hedge=True"),
        ({"hedge": True, "hedge_quantile": 0.9, "hedge_after_ms": 5}, "not both"),
        ({"hedge": True, "hedge_quantile": 1.5}, r"must be in \(0, 1\], got 1.5"),
        ({"hedge": True, "hedge_after_ms": 0}, "must be > 0 ms, got 0"),
    ],
)
def test_a_route_refuses_inconsistent_hedge_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Route("mlp", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mlp", "expected MODEL=TARGET"),
        ("mlp=", "expected MODEL=TARGET"),
        ("=a", "expected MODEL=TARGET"),
        ("m lp=a", "expected MODEL=TARGET"),
        ("mlp=a,,b", "empty target"),
        ("mlp=a:x", "weight 'x' of 'a' is not a number"),
        ("mlp=a:-1", "must be a number >= 0"),
        ("mlp=a:nan", "must be a number >= 0"),
        ("mlp=a:0,b:0", "weights are all zero"),
        ("mlp=a,a", "listed twice"),
        ("mlp=a b", "expected POOL or POOL@VERSION"),
        ("mlp=a@", "expected POOL or POOL@VERSION"),
        ("mlp=a,*", "every listed target needs a :WEIGHT"),
        ("mlp=a;colour=blue", "not one of shadow=TARGET, affinity=LABEL, hedge"),
        ("mlp=a;hedge=yes", r"hedge 'yes' is not understood; expected hedge, hedge=pNN"),
        ("mlp=a;hedge=p0", r"percentile in \(0, 100\]"),
        ("mlp=a;hedge=p101", "hedge 'p101' is not understood"),
        ("mlp=a;hedge=-5ms", "a delay above 0 ms"),
        ("mlp=a;hedge=infms", "hedge 'infms' is not understood"),
        ("mlp=a;hedge=20", "hedge '20' is not understood"),
        ("mlp=a;hedge=", "not one of shadow=TARGET, affinity=LABEL, hedge"),
        ("mlp=a;shadow=", "not one of shadow=TARGET"),
        ("mlp=a;shadow=b;shadow=c", "option 'shadow' is given twice"),
        ("mlp=a,b;shadow=b", "shadow 'b' also serves"),
    ],
)
def test_bad_entries_are_refused_with_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_route(text)


def test_a_table_has_one_entry_per_model() -> None:
    routes = parse_routes(["mlp=local:0.9,edge:0.1;shadow=triton;affinity=site", "cnn=local"])
    assert sorted(routes) == ["cnn", "mlp"]
    assert routes["cnn"].pools == ("local",)
    with pytest.raises(ValueError, match="route for 'mlp' is given twice: 'mlp=b'"):
        parse_routes(["mlp=a", "mlp=b"])


def test_a_route_validates_itself_when_built_in_code() -> None:
    with pytest.raises(ValueError, match="weighted target 'c' is not in its pools"):
        Route("mlp", ("a", "b"), {"c": 1})
    with pytest.raises(ValueError, match="the model name is empty"):
        Route("")
    with pytest.raises(ValueError, match="affinity label 'a b' is not a name"):
        Route("mlp", affinity_label="a b")


def test_a_route_cannot_be_changed_after_parsing() -> None:
    route = parse_route("mlp=a:1")
    with pytest.raises(TypeError):
        route.weights["a"] = 2  # type: ignore[index]


targets = st.builds(
    lambda pool, version: pool if version is None else f"{pool}@{version}",
    st.sampled_from(["local", "edge-plant7", "triton_2", "gpu.a", "b"]),
    st.none() | st.integers(1, 12),
)


@st.composite
def routes(draw: st.DrawFn) -> Route:
    listed = draw(st.lists(targets, max_size=4, unique=True))
    anywhere = not listed or draw(st.booleans())
    weighted = listed if anywhere else [t for t in listed if draw(st.booleans())]
    weights = {t: draw(st.floats(0.01, 100)) for t in weighted}
    shadow = draw(st.none() | targets.filter(lambda t: t not in listed))
    return Route(
        draw(st.sampled_from(["mlp", "resnet50", "text.encoder_v2"])),
        () if anywhere else tuple(listed),
        weights,
        shadow,
        draw(st.none() | st.just("site")),
        draw(st.booleans()),
    )


@given(route=routes())
def test_format_route_reads_back_as_the_same_route(route: Route) -> None:
    assert parse_route(format_route(route)) == route


def test_a_toml_file_gives_the_same_routes_as_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(
        "[routes.mlp]\n"
        'pools = ["local", "edge-plant7"]\n'
        "weights = { local = 0.9, edge-plant7 = 0.1 }\n"
        'shadow = "remote-triton"\n'
        'affinity = "site"\n'
        "hedge = true\n"
        "\n"
        "[routes.cnn]\n"
        'weights = { "local@1" = 1, "local@2" = 1 }\n',
        encoding="utf-8",
    )
    assert load_routes(path) == {
        "mlp": parse_route(
            "mlp=local:0.9,edge-plant7:0.1;shadow=remote-triton;affinity=site;hedge"
        ),
        "cnn": parse_route("cnn=local@1:1,local@2:1,*"),
    }


def test_a_json_file_takes_the_same_shape(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": {"mlp": {"pools": ["a", "b"], "hedge": True}}}))
    assert load_routes(path) == {"mlp": Route("mlp", ("a", "b"), hedge=True)}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "blue"}, "unknown key 'colour'; expected pools, weights, shadow"),
        ({"pools": "a"}, "'pools' must be a list of targets"),
        ({"weights": ["a"]}, "'weights' must be a table"),
        ({"weights": {"a": "lots"}}, "weight 'lots' of 'a' is not a number"),
        ({"weights": {"a": True}}, "weight of 'a' must be a number"),
        ({"shadow": 3}, "'shadow' must be a string"),
        ({"hedge": "yes"}, "hedge 'yes' is not understood"),
        ({"hedge": 20}, '\'hedge\' must be true, false, "pNN" or "NNms", got 20'),
        ("a,b", "expected a table of pools, weights"),
    ],
)
def test_bad_file_entries_are_refused_with_what_was_expected(options: object, message: str) -> None:
    with pytest.raises(ValueError, match=rf"route for 'mlp': {message}"):
        routes_from_mapping({"mlp": options})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("routes.yaml", "", "expected a .toml or .json file"),
        ("routes.toml", "[routes", "not valid TOML"),
        ("routes.json", "{", "not valid JSON"),
        ("routes.json", '{"routes": []}', "expected a 'routes' table"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_routes(path)
