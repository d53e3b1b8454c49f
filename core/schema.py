"""Every table, gathered on one metadata.

Each domain keeps its tables beside its service; this module imports them all so that
``SQLModel.metadata`` is whole (foreign keys between domains resolve, and the migrations'
autogenerate and the schema test compare against every table). The platform imports it.
"""

from sqlmodel import SQLModel

from espalier.core.infrastructure import audit, identity
from espalier.core.infrastructure.jobs import tables as jobs
from espalier.core.interface.console_sessions import tables as console_sessions
from espalier.core.interface.guardrails import tables as guardrails
from espalier.core.sources.conversations import tables as conversations
from espalier.core.sources.feedback import tables as feedback
from espalier.core.sources.labeling import tables as labeling
from espalier.core.sources.learning import tables as learning
from espalier.core.sources.models import tables as models
from espalier.core.sources.rag import tables as rag
from espalier.core.sources.reward import tables as reward
from espalier.core.sources.templates import tables as templates
from espalier.core.tools.agents import tables as agents
from espalier.core.tools.chains import tables as chains

metadata = SQLModel.metadata

TABLE_MODULES = (
    audit,
    identity,
    jobs,
    models,
    conversations,
    templates,
    rag,
    feedback,
    reward,
    labeling,
    learning,
    agents,
    chains,
    guardrails,
    console_sessions,
)

__all__ = ["TABLE_MODULES", "metadata"]
