"""Feedback capture: provenance, idempotency, ownership, bad rankings, rate limit, pairs, import/export."""

from __future__ import annotations

import json

import pytest
from sqlmodel import func, select

from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.sources.feedback.pairs import ranking_pairs
from espalier.core.sources.feedback.tables import FeedbackRecord, ImportedPair
from tests.support import SHARED_DATA

from .helpers import key_id, stored_request


@pytest.fixture
def espalier_settings():
    return {"feedback_rate_limit_per_minute": 1000, "reward_retrain_after_pairs": 0}


def post(espalier, path, body, role="user", key="k1"):
    headers = {**espalier.headers(role), **({"Idempotency-Key": key} if key else {})}
    return espalier.client.post(path, json=body, headers=headers)


def feedback_count(platform) -> int:
    with session_scope(platform.engine) as session:
        return session.exec(select(func.count()).select_from(FeedbackRecord)).one()


def test_completion_feedback_is_stored_with_provenance_and_replayed_not_duplicated(espalier):
    request_id, (cid,) = stored_request(espalier.platform, key_id(espalier, "user"), "Capital of France?", ["Paris."])
    body = {"completion_id": cid, "thumbs": "up", "score": 0.9, "comment": "good", "correction": "Paris, France."}
    first = post(espalier, "/api/feedback", body, key="retry-1")
    assert first.status_code == 201, first.text
    record = first.json()
    assert record["payload"] == {"thumbs": "up", "score": 0.9, "comment": "good", "correction": "Paris, France."}
    assert record["request_id"] == request_id and record["model_version"] == "v-test"
    assert record["sampling"]["temperature"] == 0.7 and record["key_id"] == key_id(espalier, "user")
    again = post(espalier, "/api/feedback", body, key="retry-1")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == record["id"]
    changed = post(espalier, "/api/feedback", {**body, "thumbs": "down"}, key="retry-1")
    assert changed.status_code == 409 and changed.json()["code"] == "idempotency_key_reused"
    missing = post(espalier, "/api/feedback", body, key=None)
    assert missing.status_code == 400 and missing.json()["code"] == "idempotency_key_required"
    assert feedback_count(espalier.platform) == 1
    assert espalier.client.get(f"/api/feedback/{record['id']}", headers=espalier.headers("user")).status_code == 200


def test_a_key_cannot_give_feedback_on_anothers_completion(espalier):
    platform = espalier.platform
    other = platform.keys.create(name="someone-else", role="user").key
    _, (cid,) = stored_request(platform, other.split("_")[1], "Secret question", ["secret answer"])
    response = post(espalier, "/api/feedback", {"completion_id": cid, "thumbs": "down"})
    assert response.status_code == 404 and "for this key" in response.json()["detail"]
    assert post(espalier, "/api/feedback", {"completion_id": "cmp_nope", "thumbs": "down"}, key="k2").status_code == 404
    # and the owner's feedback is invisible to another user key
    ok = espalier.client.post(
        "/api/feedback",
        json={"completion_id": cid, "thumbs": "up"},
        headers={"Authorization": f"Bearer {other}", "Idempotency-Key": "o1"},
    )
    assert ok.status_code == 201
    assert espalier.client.get(f"/api/feedback/{ok.json()['id']}", headers=espalier.headers("user")).status_code == 404
    assert feedback_count(platform) == 1


@pytest.mark.parametrize(
    ("ranks", "code"),
    [
        ([1, 2], "wrong_candidate_count"),
        ([1, 1, 2], "invalid_ranking"),  # a duplicate rank that is not a proper tie
        ([1, 3, 3], "invalid_ranking"),
        ([2, 2, 3], "invalid_ranking"),
    ],
)
def test_bad_rankings_are_refused_and_nothing_is_written(espalier, ranks, code):
    request_id, ids = stored_request(espalier.platform, key_id(espalier, "user"), "Say hi", ["hi", "hello", "hey"])
    candidates = [{"completion_id": cid, "rank": rank} for cid, rank in zip(ids, ranks, strict=False)]
    response = post(espalier, "/api/feedback/rankings", {"request_id": request_id, "candidates": candidates})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code and response.json()["detail"]
    assert feedback_count(espalier.platform) == 0


def test_the_same_candidate_twice_and_foreign_candidates_are_refused(espalier):
    request_id, ids = stored_request(espalier.platform, key_id(espalier, "user"), "Say hi", ["hi", "hello", "hey"])
    _, other_ids = stored_request(espalier.platform, key_id(espalier, "user"), "Other", ["a", "b", "c"])
    twice = [
        {"completion_id": ids[0], "rank": 1},
        {"completion_id": ids[0], "rank": 2},
        {"completion_id": ids[1], "rank": 3},
    ]
    foreign = [
        {"completion_id": ids[0], "rank": 1},
        {"completion_id": ids[1], "rank": 2},
        {"completion_id": other_ids[2], "rank": 3},
    ]
    assert (
        post(espalier, "/api/feedback/rankings", {"request_id": request_id, "candidates": twice}, key="a").json()[
            "code"
        ]
        == "duplicate_candidate"
    )
    assert (
        post(espalier, "/api/feedback/rankings", {"request_id": request_id, "candidates": foreign}, key="b").json()[
            "code"
        ]
        == "wrong_candidate_count"
    )
    assert feedback_count(espalier.platform) == 0


def test_ranking_pair_rules():
    texts = ["a", "b", "c", "d"]
    # a and b tie for first, c third, d flagged although ranked first
    assert sorted(ranking_pairs(texts, [1, 1, 3, 1], [False, False, False, True])) == [
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    assert ranking_pairs(texts[:3], [1, 1, 1], [False] * 3) == []
    assert len(ranking_pairs(texts, [1, 2, 3, 4], [False] * 4)) == 6  # n choose 2


def test_rankings_thumbs_and_corrections_become_pairs_and_export_as_trl_jsonl(espalier):
    platform, user = espalier.platform, key_id(espalier, "user")
    request_id, ids = stored_request(platform, user, "Name a colour", ["red", "blue", "sdfgh"])
    ranking = [
        {"completion_id": ids[0], "rank": 1},
        {"completion_id": ids[1], "rank": 1},
        {"completion_id": ids[2], "rank": 3, "unacceptable": True},
    ]
    assert (
        post(espalier, "/api/feedback/rankings", {"request_id": request_id, "candidates": ranking}, key="r").status_code
        == 201
    )
    # an operator labels the same item differently
    labeler = [
        {"completion_id": ids[0], "rank": 2},
        {"completion_id": ids[1], "rank": 1},
        {"completion_id": ids[2], "rank": 3},
    ]
    assert (
        post(
            espalier,
            "/api/feedback/rankings",
            {"request_id": request_id, "candidates": labeler},
            role="operator",
            key="r",
        ).status_code
        == 201
    )
    # thumbs on two answers to one prompt (two requests), and a correction
    _, (up,) = stored_request(platform, user, "2+2?", ["4"])
    _, (down,) = stored_request(platform, user, "2+2?", ["5"])
    assert post(espalier, "/api/feedback", {"completion_id": up, "thumbs": "up"}, key="t1").status_code == 201
    assert (
        post(
            espalier, "/api/feedback", {"completion_id": down, "thumbs": "down", "correction": "4, not 5"}, key="t2"
        ).status_code
        == 201
    )

    listed = espalier.client.get("/api/pairs", headers=espalier.headers("operator")).json()
    got = {(p["origin"], p["chosen"], p["rejected"]) for p in listed["items"]}
    assert got == {
        ("ranking", "red", "sdfgh"),
        ("ranking", "blue", "sdfgh"),  # user: tie gives none, flag loses
        ("ranking", "blue", "red"),
        ("ranking", "blue", "sdfgh"),
        ("ranking", "red", "sdfgh"),  # operator
        ("thumbs", "4", "5"),
        ("correction", "4, not 5", "5"),
    }
    assert listed["pairs"] == 7 and listed["by_origin"] == {"ranking": 5, "thumbs": 1, "correction": 1}
    excluded = espalier.client.get(
        f"/api/pairs?exclude_labelers={key_id(espalier, 'operator')}", headers=espalier.headers("operator")
    ).json()
    assert excluded["pairs"] == 4
    export = espalier.client.get("/api/pairs/export", headers=espalier.headers("operator"))
    rows = [json.loads(line) for line in export.text.splitlines()]
    assert len(rows) == 7 and set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert rows[0]["prompt"] == "\n\nHuman: Name a colour\n\nAssistant:"
    assert espalier.client.get("/api/pairs", headers=espalier.headers("user")).status_code == 403


def test_import_of_external_pairs_is_all_or_nothing_and_idempotent(espalier):
    all_lines = (SHARED_DATA / "hh_pairs_train.jsonl").read_text().splitlines()
    lines = all_lines[:50]
    headers = {**espalier.headers("operator"), "Content-Type": "application/x-ndjson"}
    response = espalier.client.post("/api/pairs/import?source=hh", content="\n".join(lines), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 50
    again = espalier.client.post("/api/pairs/import?source=hh", content="\n".join(lines), headers=headers)
    assert again.json() == {"read": 50, "added": 0, "already_present": 50}
    # a new good line then a bad one: neither is imported
    bad = espalier.client.post(
        "/api/pairs/import", content=all_lines[60] + '\n{"prompt": "x", "chosen": 1}', headers=headers
    )
    assert bad.status_code == 400 and "line 2" in bad.json()["detail"]
    with session_scope(espalier.platform.engine) as session:
        assert session.exec(select(func.count()).select_from(ImportedPair)).one() == 50
    skipping = espalier.client.post(
        "/api/pairs/import?skip_invalid=true",
        headers=headers,
        content=all_lines[60] + '\n{"prompt": "x", "chosen": ""}',
    )
    assert skipping.json()["added"] == 1 and skipping.json()["skipped"] == 1
    assert "line 2" in skipping.json()["skipped_reasons"][0]
    assert espalier.platform.pairs.count() == 51


def test_training_with_too_few_pairs_is_refused_before_a_job_exists(espalier):
    response = espalier.client.post(
        "/api/reward/train", json={"params": {"min_pairs": 4}}, headers=espalier.headers("operator")
    )
    assert response.status_code == 400 and response.json()["code"] == "too_few_pairs"
    assert "import pairs" in response.json()["detail"]
    assert espalier.platform.jobs.list(kind="train:reward") == []
    bad = espalier.client.post("/api/reward/train", json={"params": {"epoch": 1}}, headers=espalier.headers("operator"))
    assert bad.status_code == 400 and "unknown training settings" in bad.json()["detail"]
    score = espalier.client.post(
        "/api/reward/score", json={"items": [{"prompt": "p", "completion": "c"}]}, headers=espalier.headers("user")
    )
    assert score.status_code == 409 and score.json()["code"] == "no_reward_model"


class TestRateLimit:
    @pytest.fixture
    def espalier_settings(self):
        return {"feedback_rate_limit_per_minute": 3, "reward_retrain_after_pairs": 0}

    def test_feedback_flooding_is_limited_per_key_and_replays_still_answer(self, espalier):
        _, ids = stored_request(espalier.platform, key_id(espalier, "user"), "Q", ["a", "b", "c", "d", "e"])
        for number, cid in enumerate(ids[:3]):
            assert (
                post(espalier, "/api/feedback", {"completion_id": cid, "score": 0.5}, key=f"f{number}").status_code
                == 201
            )
        limited = post(espalier, "/api/feedback", {"completion_id": ids[3], "score": 0.5}, key="f3")
        assert limited.status_code == 429 and "retry with the same Idempotency-Key" in limited.json()["detail"]
        assert limited.json()["code"] == "feedback_rate_limited" and 1 <= int(limited.headers["retry-after"]) <= 60
        assert post(espalier, "/api/feedback", {"completion_id": ids[0], "score": 0.5}, key="f0").status_code == 200
        assert feedback_count(espalier.platform) == 3


def test_feedback_and_pairs_persist_on_both_backends(tmp_path, database_url):
    """Idempotency under concurrent retries and pair derivation, on SQLite and PostgreSQL."""
    from concurrent.futures import ThreadPoolExecutor

    from espalier.api.testing import build_harness

    harness = build_harness(tmp_path / "home", [], database_url=database_url, reward_retrain_after_pairs=0)
    espalier = next(harness)
    try:
        request_id, ids = stored_request(espalier.platform, key_id(espalier, "user"), "Pick one", ["x", "y", "z"])
        body = {
            "request_id": request_id,
            "candidates": [{"completion_id": c, "rank": r} for c, r in zip(ids, [1, 2, 3], strict=False)],
        }
        with ThreadPoolExecutor(6) as pool:  # six concurrent retries of one submission
            answers = list(pool.map(lambda _: post(espalier, "/api/feedback/rankings", body, key="same"), range(6)))
        assert sorted(a.status_code for a in answers) == [200] * 5 + [201]
        assert len({a.json()["id"] for a in answers}) == 1
        assert feedback_count(espalier.platform) == 1
        assert [(p.chosen, p.rejected) for p in espalier.platform.pairs.derived()] == [
            ("x", "y"),
            ("x", "z"),
            ("y", "z"),
        ]
    finally:
        harness.close()


def test_labeler_agreement_shows_who_is_far_below_consensus(espalier):
    from espalier.core.sources.feedback.agreement import kendall_tau_b

    assert kendall_tau_b([1, 2, 3], [1, 2, 3]) == 1 and kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1
    assert kendall_tau_b([1, 1, 3], [1, 1, 1]) is None
    platform = espalier.platform
    contrarian = platform.keys.create(name="contrarian", role="operator").key
    for number in range(3):
        request_id, ids = stored_request(platform, key_id(espalier, "user"), f"Q{number}", ["a", "b", "c"])
        for role, ranks in (("operator", [1, 2, 3]), ("admin", [1, 2, 3])):
            body = {
                "request_id": request_id,
                "candidates": [{"completion_id": c, "rank": r} for c, r in zip(ids, ranks, strict=False)],
            }
            assert post(espalier, "/api/feedback/rankings", body, role=role, key=f"{number}").status_code == 201
        body = {
            "request_id": request_id,
            "candidates": [{"completion_id": c, "rank": r} for c, r in zip(ids, [3, 2, 1], strict=False)],
        }
        assert (
            espalier.client.post(
                "/api/feedback/rankings",
                json=body,
                headers={"Authorization": f"Bearer {contrarian}", "Idempotency-Key": f"{number}"},
            ).status_code
            == 201
        )
    report = espalier.client.get("/api/feedback/agreement", headers=espalier.headers("operator")).json()
    labelers = report["labelers"]
    assert labelers[contrarian.split("_")[1]]["below_consensus"] is True
    assert labelers[contrarian.split("_")[1]]["mean_tau"] == -1
    assert labelers[key_id(espalier, "operator")]["below_consensus"] is False
    assert len(report["items"]) == 3 and report["mean_tau"] == round(-1 / 3, 4)

    # Training leaves the contrarian out by default (ESPALIER_EXCLUDE_BELOW_CONSENSUS): 3 requests
    # x 3 pairs from each of the two who agree; the contrarian's 9 reversed pairs come back only
    # when asked for.
    who = key_id(espalier, "operator"), key_id(espalier, "admin")
    kept = platform.pairs.all()
    assert len(kept) == 18 and {p.labeler for p in kept} == set(who)
    assert platform.pairs.below_consensus() == [contrarian.split("_")[1]]
    everyone = platform.pairs.all(exclude_below_consensus=False)
    assert len(everyone) == 27 and contrarian.split("_")[1] in {p.labeler for p in everyone}
    platform.pairs.exclude_below_consensus = False  # the setting turned off
    assert len(platform.pairs.all()) == 27
