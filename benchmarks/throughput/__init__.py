"""The throughput benchmark: closed-loop streamed requests to one sllm worker, to
`transformers serve --continuous-batching` and to the in-process upper bound."""
