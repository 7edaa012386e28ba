"""deploy/grafana/sluice.json charts only what the programs export: the trio is started (a CPU
worker on stories260K), answers one streamed chat request, and every metric and label each
panel's query names must be in the /metrics the three serve."""
import json
import re
import time

import requests

from conftest import start_controller, start_gateway, start_worker, need_stories
from deploy_files import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "sluice.json"
# Labels Prometheus adds to every series it scrapes (job and instance; the Prometheus
# Operator's target labels too).
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "offset", "bool", "le", "inf", "nan"}


def exprs(dashboard):
    out = []
    for panel in dashboard["panels"]:
        for row_panel in [panel, *panel.get("panels", [])]:
            out += [(row_panel["title"], t["expr"]) for t in row_panel.get("targets", [])]
    return out


def names_in(expr):
    """(metric names, label names) a PromQL expression uses."""
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {l.strip() for l in body.split(",") if l.strip()}
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)', " ", expr)
    metrics = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
        word, rest = m.group(0), bare[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or a keyword
        metrics.add(word)
    return metrics, labels


def scrape(url):
    """{series name: label names} of a Prometheus text page."""
    series = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        assert m, line
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        series.setdefault(m.group(1), set()).update(labels)
    return series


def test_dashboard_queries_only_exported_metrics(procs):
    ctl = start_controller(procs)
    worker = start_worker(procs, need_stories() / "hf", controller=ctl.url)
    gw = start_gateway(procs, ctl.url)
    deadline = time.time() + 20
    while "hf" not in [m["id"] for m in requests.get(gw.url + "/v1/models", timeout=5).json()["data"]]:
        assert time.time() < deadline, "the worker did not register"
        time.sleep(0.05)
    body = {"model": "hf", "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Once upon a time"}]}
    with requests.post(gw.url + "/v1/chat/completions", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        assert any(line == b"data: [DONE]" for line in r.iter_lines())
    exported = {}
    for p in (ctl, worker, gw):
        for name, labels in scrape(p.url).items():
            exported.setdefault(name, set()).update(labels)
    all_labels = set().union(*exported.values())

    dashboard = json.loads(DASHBOARD.read_text())
    queries = exprs(dashboard)
    assert len(queries) >= 15
    missing = []
    for title, expr in queries:
        metrics, labels = names_in(expr)
        assert metrics, f"{title}: no metric in {expr}"
        missing += [f"{title}: metric {m}" for m in metrics if m not in exported]
        missing += [f"{title}: label {l}" for l in labels if l not in all_labels | TARGET_LABELS | {"le"}]
    assert not missing, "the dashboard queries what no program exports:\n" + "\n".join(missing)


def test_dashboard_covers_latency_queue_kv_and_prefix_cache():
    text = " ".join(e for _, e in exprs(json.loads(DASHBOARD.read_text())))
    for metric in ["sluice_gateway_time_to_first_token_seconds_bucket", "sluice_gateway_inter_token_latency_seconds_bucket",
                   "sluice_worker_requests_waiting", "sluice_worker_kv_blocks_free",
                   "sluice_worker_prefix_cache_hits_total"]:
        assert metric in text, metric


def test_query_parser_finds_metrics_and_labels():
    metrics, labels = names_in('histogram_quantile(0.95, sum by (le, instance) (rate(x_bucket{route="/v1"}[$__rate_interval]))) / y')
    assert metrics == {"x_bucket", "y"} and labels == {"le", "instance", "route"}


def test_dashboard_panels_are_well_formed():
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and d["uid"] and d["title"]
    assert d["templating"]["list"][0] == {**d["templating"]["list"][0], "name": "datasource", "type": "datasource",
                                          "query": "prometheus"}
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
