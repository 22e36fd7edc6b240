"""loadtest/bench/hop.py, the nginx hop experiment: every variant still applies to the template as it is
now and nginx accepts the result (a variant whose pattern the template lost says so instead of measuring
the unchanged config); what a variant saved is read against the measurement of current beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.stackctl.config import effective, render_nginx
from deploy.stackctl.rundir import RunDir, pinned_paths
from loadtest.bench import hop
from loadtest.bench.rows import BenchError


@pytest.mark.parametrize("variant", hop.VARIANTS, ids=hop.NAMES)
def test_every_variant_changes_the_rendered_config_and_nginx_accepts_it(
    variant: hop.Variant, tmp_path: Path
) -> None:
    run = RunDir(tmp_path)
    config = effective({}, None, pinned_paths(run))
    component = hop.variant_nginx(variant)
    component.prepare(run, config)
    component.check(run)  # nginx -t
    changed = run.nginx_conf.read_text()
    assert (changed == render_nginx(config.settings)) is (variant.name == hop.CURRENT)


def test_a_variant_whose_pattern_is_gone_is_refused() -> None:
    with pytest.raises(BenchError, match=r"nginx\.conf has no 'no such line' to change"):
        hop.edit("no such line", "")("worker_processes auto;\n")


def test_the_saving_is_read_against_the_current_measured_beside_it() -> None:
    def fields(total: float, app: float) -> dict[str, object]:
        return {
            "rps": 1000.0,
            "server_cpu_us_per_request": total,
            "server_cpu_us_by_role": {"app": app, "nginx": total - app},
        }

    rounds = [
        {
            "direct@pool-128": fields(100, 100),
            "current@pool-128": fields(160, 120),
            "pool-128": fields(150, 115),
            "direct@no-x-real-ip": fields(90, 90),
            "current@no-x-real-ip": fields(140, 110),
            "no-x-real-ip": fields(141, 110),
        },
        {
            "pool-128": fields(170, 130),
            "current@pool-128": fields(175, 130),
            "direct@pool-128": fields(110, 110),
            "no-x-real-ip": fields(150, 110),
            "current@no-x-real-ip": fields(149, 110),
            "direct@no-x-real-ip": fields(100, 100),
        },
    ]
    variants = [v for v in hop.VARIANTS if v.name in (hop.CURRENT, "pool-128", "no-x-real-ip")]
    direct, current, pool, real_ip = hop.summarize(rounds, variants)
    assert direct["total_us"] == 100.0 and direct["app_us"] == 100.0, "every direct measurement"
    assert current["hop_us_rounds"] == [60.0, 50.0, 65.0, 49.0] and current["saved_us"] is None
    assert pool["hop_us_rounds"] == [50.0, 60.0], "each against the app alone measured beside it"
    assert pool["saved_us_rounds"] == [10.0, 5.0] and pool["saved_us"] == 7.5
    assert real_ip["saved_us_rounds"] == [-1.0, -1.0] and real_ip["keeps_every_feature"] is True


def test_an_unknown_variant_is_refused_and_current_is_always_measured() -> None:
    with pytest.raises(BenchError, match="no such variant 'pool-64'"):
        hop.chosen("pool-64")
    assert [v.name for v in hop.chosen("pool-128")] == [hop.CURRENT, "pool-128"]
