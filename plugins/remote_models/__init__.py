"""Built-in plugin: models served by any OpenAI-compatible server (vLLM, llama.cpp server,
Ollama, another Espalier) reached by base URL.

Register one with::

    espalier models add big --provider remote --source http://gpu-box:8000/v1 \\
        --option model=Qwen2.5-7B-Instruct --option api_key_env=GPU_BOX_KEY

The key itself is never stored: ``api_key_env`` names the environment variable that holds it.
"""

from espalier import hookimpl
from espalier.plugins.remote_models.client import RemoteChatModel, RemoteProvider

__all__ = ["RemoteChatModel", "RemoteProvider"]


@hookimpl
def register_model_providers(register):
    register(RemoteProvider())
