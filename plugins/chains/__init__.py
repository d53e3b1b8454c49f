"""Built-in named chains: ``assistant`` (conversation buffer), ``math-tutor`` (chain-of-thought
template with a summary memory) and ``researcher`` (ReAct over the retrieval tools, buffer memory)."""

from espalier import hookimpl
from espalier.core.infrastructure.contracts import ChainSpec

CHAINS = (
    ChainSpec(
        name="assistant",
        description="A helpful assistant that remembers the last turns.",
        system="You are a helpful, concise assistant.",
        memory="buffer",
        window=6,
    ),
    ChainSpec(
        name="math-tutor",
        description="Step-by-step maths with a running summary of the session.",
        template="cot-math",
        memory="summary",
    ),
    ChainSpec(
        name="researcher",
        description="Answers from documents with search and lookup.",
        memory="buffer",
        window=3,
        tools=("search", "lookup", "calculator"),
    ),
)


@hookimpl(trylast=True)
def register_chains(register):
    for chain in CHAINS:
        register(chain)
