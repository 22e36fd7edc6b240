"""The Prometheus text exposition the platform answers at APP_METRICS_PATH, read into samples: enough of the
format for what prometheus-client writes (`name{label="value",...} value`), without its parser's cost."""

from __future__ import annotations

import math
from collections import defaultdict

Labels = dict[str, str]


def parse_labels(text: str) -> Labels:
    labels: Labels = {}
    index = 0
    while index < len(text):
        equals = text.index("=", index)
        name = text[index:equals].strip().lstrip(",").strip()
        start = equals + 2  # past `="`
        end = start
        value = []
        while text[end] != '"':
            if text[end] == "\\":
                escaped = text[end + 1]
                value.append({"n": "\n", '"': '"', "\\": "\\"}.get(escaped, escaped))
                end += 2
            else:
                value.append(text[end])
                end += 1
        labels[name] = "".join(value)
        index = end + 1
    return labels


class Exposition:
    """Samples by metric name (`app_worker_requests_served`, `app_requests_total`, ...)."""

    def __init__(self, text: str) -> None:
        self.samples: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isnan(number):
                continue
            brace = head.find("{")
            if brace < 0:
                self.samples[head].append(({}, number))
            else:
                self.samples[head[:brace]].append((parse_labels(head[brace + 1 : head.rindex("}")]), number))

    def get(self, name: str) -> list[tuple[Labels, float]]:
        return self.samples.get(name, [])

    def by_pid(self, name: str) -> dict[int, float]:
        """A per-worker gauge (multiprocess_mode="liveall"): its value by the `pid` label."""
        return {
            int(labels["pid"]): value for labels, value in self.get(name) if labels.get("pid", "").isdigit()
        }

    def total(self, name: str) -> float:
        return sum(value for _, value in self.get(name))

    def summed_by(self, name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = defaultdict(float)
        for labels, value in self.get(name):
            found[labels.get(label, "")] += value
        return dict(found)
