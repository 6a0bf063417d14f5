"""checkpoint -> text: the KV cache and sampling (engine), a checkpoint made ready to generate (sampler),
quantized decoding, and chat."""
