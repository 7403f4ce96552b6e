"""Serving: the vLLM server we start (`process`), the client every other module talks to it through (`client`), and
the vLLM plugin that vLLM itself loads (`vllm_plugin`)."""
