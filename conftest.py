"""The vLLM plugin and its tests need vLLM, which lives in its own environment (``.venv-vllm``:
it pins its own torch and transformers); everywhere else they are left out of collection."""

import importlib.util

_vllm = importlib.util.find_spec("vllm")
collect_ignore_glob = [] if _vllm and _vllm.origin else ["src/longreach/integrations/vllm/*", "tests/vllm_plugin/*"]
