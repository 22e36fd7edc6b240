"""APP_MODULE and APP_SRC on the real stack: an app this test writes itself (not the demo) served by nginx ->
gunicorn -> our worker, inside the platform: its routes counted in the metrics, the probes answered."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.support.stack import make_stack, running

pytestmark = pytest.mark.stack

SHOP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def order(request):
    return JSONResponse({"order": request.path_params["order_id"]})


app = Starlette(routes=[Route("/orders/{order_id}", order)])
"""


def test_an_app_of_its_own_is_served_counted_and_probed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "shop.py").write_text(SHOP)
    stack = make_stack(
        tmp_path / "run",
        APP_MODULE="shop:app",
        APP_SRC=str(src),
        WEB_CONCURRENCY="1",  # the worker that answers the scrape wrote its own counts just before
        APP_METRICS_PATH="/_platform/metrics",
    )
    with running(stack):
        for n in range(3):
            assert httpx2.get(f"{stack.url}/orders/{n}").json() == {"order": str(n)}
        assert httpx2.get(f"{stack.url}/api/ping").status_code == 404  # not the demo
        assert httpx2.get(f"{stack.url}/healthz").json() == {"status": "ok"}
        ready = httpx2.get(f"{stack.url}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"

        # nginx's status port asks the app at APP_METRICS_PATH; the public port refuses that path itself
        text = httpx2.get(f"{stack.status_url}/metrics").text
        assert 'app_requests_total{method="GET",route="/orders/{order_id}",status="200"} 3.0' in text
        assert 'route="/orders/1"' not in text
        assert "app_worker_up 1.0" in text
        public = httpx2.get(f"{stack.url}/_platform/metrics")
        assert public.status_code == 404 and public.json()["layer"] == "nginx"
