"""Pieces of bench/bench_service.py against the session's real server: the minimal HTTP client and the memory reading."""

from __future__ import annotations

import json
import os

from bench.bench_service import TEXT_QUERY, RawHTTP, memory_of, summarise


def test_raw_http_client_gets_what_httpx_gets(app_server):
    client = RawHTTP(app_server.url)
    try:
        answers = [client.request("/search/text", json.dumps(TEXT_QUERY).encode(), "application/json") for _ in range(3)]
        refused = client.request("/search/text", b"{}", "application/json")  # the connection survives an error answer
    finally:
        client.close()
    with app_server.client() as reference:
        expected = reference.post("/search/text", json=TEXT_QUERY).json()
    for status, body in answers:
        assert status == 200
        got = json.loads(body)
        assert [(h["id"], h["score"]) for h in got["results"]] == [(h["id"], h["score"]) for h in expected["results"]]
    assert refused[0] == 422


def test_memory_of_reads_this_process():
    mem = memory_of(os.getpid())
    assert mem["rss_mib"] > 0 and 0 < mem["pss_mib"] <= mem["rss_mib"]
    assert abs(mem["private_mib"] + mem["shared_mib"] - mem["rss_mib"]) < 1


def test_summarise_counts_missing_and_failed_requests():
    csv_text = (
        "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n"
        "0.010,0,0,0,0,0,200,0.0\n0.020,0,0,0,0,0,200,0.01\n0.030,0,0,0,0,0,503,0.02\n"
    )
    result = summarise(csv_text, sent=4)
    assert result["errors"] == 2 and result["status_codes"] == {"200": 2, "503": 1}
    assert result["p50_ms"] == 20.0
