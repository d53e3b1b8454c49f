"""Named, versioned prompt templates, including chain-of-thought few-shot ones.

A template is an optional system text, worked examples (each a question, its reasoning and its
answer, shown to the model ahead of the real question), and a user message written in Jinja2
(sandboxed, strict: a missing variable is an error that names it). Saving a template under an
existing name creates its next version; requests pick ``name`` (latest) or ``name@version``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import ChatMessage, TemplateSpec
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import InvalidInput, NotFound
from espalier.core.infrastructure.identity import Principal
from espalier.core.infrastructure.registry import NAME_PATTERN
from espalier.core.sources.templates.tables import PromptTemplate

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
MAX_TEMPLATE_CHARS = 50_000


def _variables(source: str) -> set[str]:
    try:
        return set(meta.find_undeclared_variables(_env.parse(source)))
    except TemplateSyntaxError as exc:
        raise InvalidInput(f"template syntax error on line {exc.lineno}: {exc.message}") from exc


def validate_spec(spec: TemplateSpec) -> list[str]:
    if not NAME_PATTERN.match(spec.name):
        raise InvalidInput(f"invalid template name {spec.name!r}: use letters, digits, '.', '_' or '-'")
    if len(spec.user) + len(spec.system or "") > MAX_TEMPLATE_CHARS:
        raise InvalidInput(f"template is longer than {MAX_TEMPLATE_CHARS} characters")
    for number, example in enumerate(spec.examples, 1):
        missing = {"question", "answer"} - set(example)
        if missing:
            raise InvalidInput(
                f"example {number} lacks {', '.join(sorted(missing))} "
                f"(each needs question and answer; reasoning is optional)"
            )
    variables = _variables(spec.user) | (_variables(spec.system) if spec.system else set())
    return sorted(variables)


def render(
    template: PromptTemplate, variables: Mapping[str, Any], history: Sequence[ChatMessage] = ()
) -> list[ChatMessage]:
    """System text, then the worked examples as earlier turns, then the history, then the question."""
    missing = [name for name in template.variables if name not in variables]
    if missing:
        raise InvalidInput(
            f"template '{template.name}' v{template.version} needs variables: {', '.join(missing)}",
            code="template_variables_missing",
        )
    try:
        messages: list[ChatMessage] = []
        if template.system:
            messages.append(ChatMessage("system", _env.from_string(template.system).render(**variables)))
        for example in template.examples:
            answer = example["answer"]
            if example.get("reasoning"):
                answer = f"{example['reasoning']}\nThe answer is {example['answer']}."
            messages += [ChatMessage("user", example["question"]), ChatMessage("assistant", answer)]
        messages += list(history)
        messages.append(ChatMessage("user", _env.from_string(template.user).render(**variables)))
    except UndefinedError as exc:
        raise InvalidInput(f"template '{template.name}': {exc.message}") from exc
    return messages


class TemplateService:
    def __init__(self, engine: Engine, audit: AuditLog):
        self.engine = engine
        self.audit = audit

    def save(self, spec: TemplateSpec, *, by: Principal | None = None) -> PromptTemplate:
        variables = validate_spec(spec)
        with session_scope(self.engine) as session:
            latest = session.exec(
                select(func.max(PromptTemplate.version)).where(PromptTemplate.name == spec.name)
            ).one()
            record = PromptTemplate(
                name=spec.name,
                version=(latest or 0) + 1,
                description=spec.description,
                system=spec.system,
                examples=[dict(example) for example in spec.examples],
                user=spec.user,
                variables=variables,
                created_by=by.key_id if by else None,
            )
            session.add(record)
        self.audit.record(by, "template.save", f"{record.name}@{record.version}")
        return record

    def ensure(self, spec: TemplateSpec) -> None:
        """Save a plugin's template as version 1 unless the name exists already."""
        with session_scope(self.engine) as session:
            exists = session.exec(select(PromptTemplate.id).where(PromptTemplate.name == spec.name)).first()
        if exists is None:
            self.save(spec)

    def get(self, reference: str) -> PromptTemplate:
        """``name`` (the latest version) or ``name@version``."""
        name, _, version = reference.partition("@")
        with session_scope(self.engine) as session:
            query = select(PromptTemplate).where(PromptTemplate.name == name)
            if version:
                if not version.isdigit():
                    raise InvalidInput(f"template version must be a number, got '{version}'")
                query = query.where(PromptTemplate.version == int(version))
            record = session.exec(query.order_by(PromptTemplate.version.desc())).first()
        if record is None:
            raise NotFound(f"no prompt template '{reference}' (see GET /api/templates)", code="template_not_found")
        return record

    def list(self) -> list[PromptTemplate]:
        with session_scope(self.engine) as session:
            return list(session.exec(select(PromptTemplate).order_by(PromptTemplate.name, PromptTemplate.version)))
