"""LoRA adapters: validation (`validate`), the running server and merging (`manage`), the command line."""
