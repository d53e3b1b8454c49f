"""Rankings of a request's candidates by a person (the console playground gives them).

Rank 1 is best; ties are allowed; a candidate can be flagged unacceptable. The feedback store
turns these into preference pairs; this module only checks and keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.engine import Engine
from sqlmodel import select

from .db.console_tables import CandidateRanking
from .db.engine import session_scope
from .db.tables import ChatRequestRecord, CompletionRecord
from .errors import InvalidInput, NotFound
from .security import Principal


class RankingService:
    def __init__(self, engine: Engine):
        self.engine = engine

    def rank(self, request_id: str, ranks: Mapping[str, int], unacceptable: Sequence[str], principal: Principal,
             *, source: str = "console") -> CandidateRanking:  # fmt: skip
        with session_scope(self.engine) as session:
            request = session.get(ChatRequestRecord, request_id)
            if request is None or (request.owner_key_id != principal.key_id and not principal.has_role("admin")):
                raise NotFound(f"no request '{request_id}' for this key")
            candidates = set(session.exec(select(CompletionRecord.id).where(CompletionRecord.request_id == request_id)))
            if len(candidates) < 2:
                raise InvalidInput("ranking needs a request with at least two candidates: ask for n >= 2")
            if set(ranks) != candidates:
                raise InvalidInput("give every candidate of the request a rank, and only those")
            for completion_id, rank in ranks.items():
                if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= len(candidates):
                    raise InvalidInput(f"rank of {completion_id} must be a whole number from 1 to {len(candidates)}")
            flagged = sorted(set(unacceptable))
            if not set(flagged) <= candidates:
                raise InvalidInput("only the request's own candidates can be flagged unacceptable")
            record = CandidateRanking(request_id=request_id, ranker_key_id=principal.key_id, ranks=dict(ranks),
                                      unacceptable=flagged, source=source)  # fmt: skip
            session.add(record)
        return record

    def for_request(self, request_id: str) -> list[CandidateRanking]:
        with session_scope(self.engine) as session:
            query = select(CandidateRanking).where(CandidateRanking.request_id == request_id)
            return list(session.exec(query.order_by(CandidateRanking.created_at)))
