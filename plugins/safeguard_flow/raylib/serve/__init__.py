"""The online path: vLLM replicas behind an OpenAI-compatible endpoint with Ray Serve LLM."""
