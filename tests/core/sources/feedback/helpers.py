"""Stored requests and candidates for feedback tests, without running a model.

Feedback's precondition is a stored completion; how chat stores one is tested in
tests/api/test_openai_api.py. The end-to-end test (test_reward_loop.py) uses the real model.
"""

from __future__ import annotations

import secrets

from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.sources.conversations.tables import ChatRequestRecord, CompletionRecord, Conversation


def stored_request(platform, owner_key_id: str, prompt: str, texts: list[str]) -> tuple[str, list[str]]:
    request_id = f"chatcmpl-{secrets.token_hex(8)}"
    conversation_id = f"conv_{secrets.token_hex(6)}"
    ids = [f"cmp_{secrets.token_hex(8)}" for _ in texts]
    with session_scope(platform.engine) as session:
        session.add(Conversation(id=conversation_id, owner_key_id=owner_key_id))
        session.flush()
        session.add(
            ChatRequestRecord(
                id=request_id,
                conversation_id=conversation_id,
                owner_key_id=owner_key_id,
                model="smollm2-135m-instruct",
                model_version="v-test",
                messages=[{"role": "user", "content": prompt}],
                params={"temperature": 0.7, "top_p": 1.0, "n": len(texts), "seed": 1},
            )
        )
        session.flush()
        for index, (completion_id, text) in enumerate(zip(ids, texts, strict=True)):
            session.add(CompletionRecord(id=completion_id, request_id=request_id, index=index, text=text))
    return request_id, ids


def key_id(espalier, role: str) -> str:
    return espalier.keys[role].split("_")[1]
