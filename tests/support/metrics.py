"""Reading a /metrics answer as a test would: by sample name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One scrape, parsed with prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for a labelled series not yet created."""
        key = (name, frozenset(labels.items()))
        if key not in self.samples:
            assert labels, f"{name} is not in the scrape:\n{self.text}"
            return 0.0
        return self.samples[key]
