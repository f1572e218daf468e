"""The LoRA adapter benchmark's parts: samples and report, the measured cases, the figure."""
