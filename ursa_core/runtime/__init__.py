"""Speed and memory of a loaded model: attention choice, compiled layers, block swap, fp8 weight storage,
placement of the parts and the memory estimate."""
